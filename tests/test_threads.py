"""One fitted detector used from two threads at once: the same results as one
after the other, and the process's warning settings and the fitted net as
they were."""

import contextlib
import io
import multiprocessing
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import validate_data

import sklearn_metarefine._image_files as image_files
from sklearn_metarefine import FlowDetector, IQRRefiner
from sklearn_metarefine.__main__ import main

TINY = dict(n_blocks=2, hidden_size=8, max_epochs=2, device="cpu", random_state=0)


def _warning_settings():
    return list(warnings.filters), warnings.showwarning, warnings._showwarnmsg_impl


def _overlapped(call, hold):
    """``call()`` in two threads, the first inside ``hold`` (a context the
    calls pass through) until the second has entered it or 2 s have passed,
    the second staying in it 0.2 s: the first leaves first, as in the
    interleaving that left the second's saved settings in place."""
    entered, first = threading.Event(), threading.Event()

    @contextlib.contextmanager
    def held():
        if not first.is_set():
            first.set()
            yield
            entered.wait(2.0)
        else:
            entered.set()
            yield
            threading.Event().wait(0.2)

    errors = []

    def run():
        try:
            with hold(held):
                call()
        except Exception as error:  # reported below, in the test's thread
            errors.append(error)

    one = threading.Thread(target=run)
    one.start()
    first.wait(2.0)
    two = threading.Thread(target=run)
    two.start()
    one.join()
    two.join()
    assert not errors, errors


def test_reading_image_files_in_two_threads_restores_the_warning_settings(
    tmp_path, monkeypatch
):
    # catch_warnings(record=True) around each file: the first thread out
    # restored the settings, the second its copy of the first's, and every
    # later warning of the process went to a list nobody read.
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    opener = Image.open

    @contextlib.contextmanager
    def hold(held):
        def open_held(*args, **kwargs):
            with held():
                return opener(*args, **kwargs)

        monkeypatch.setattr(Image, "open", open_held)
        yield

    before = _warning_settings()
    _overlapped(lambda: image_files.read_image(path), hold)
    assert _warning_settings() == before
    with pytest.warns(UserWarning, match="reaches the user"):
        warnings.warn("reaches the user")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_thread_opens_an_image_reads_images(
    tmp_path, monkeypatch
):
    # A lock held by the parent's thread at the fork stays held in the child.
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    opener, inside, release = Image.open, threading.Event(), threading.Event()

    def open_held(*args, **kwargs):
        if threading.current_thread().name == "holder":
            inside.set()
            release.wait(10.0)
        return opener(*args, **kwargs)

    monkeypatch.setattr(Image, "open", open_held)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        settings = _warning_settings()
        holder = threading.Thread(
            target=image_files.read_image, args=(path,), name="holder"
        )
        holder.start()
        assert inside.wait(5.0)
        threading.Timer(1.0, release.set).start()  # the fork waits for the holder
        child = multiprocessing.get_context("fork").Process(
            target=_read_and_check_warnings, args=(path, settings)
        )
        child.start()
    child.join(20.0)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    release.set()
    holder.join()
    # 3: the child started inside the holder's catch_warnings, its warnings
    # recorded to that thread's list for good.
    assert not hung and child.exitcode == 0


def _read_and_check_warnings(path, settings):
    """In a forked child: read ``path``, then exit 3 unless the warning
    settings are the parent's ``settings`` outside any reading."""
    before = _warning_settings() == settings
    image_files.read_image(path)
    os._exit(0 if before and _warning_settings() == settings else 3)


class _Held(OutlierMixin, BaseEstimator):
    """A detector whose scoring passes through ``self.held``, if set."""

    def fit(self, X, y=None):
        validate_data(self, X)
        self.offset_ = -1.0
        return self

    def score_samples(self, X):
        X = validate_data(self, X, reset=False)
        with getattr(self, "held", contextlib.nullcontext)():
            return -np.abs(np.asarray(X, dtype=float)).sum(axis=1)


def test_a_refiner_scoring_in_two_threads_restores_the_warning_filters():
    # The filter that keeps the detector from repeating the names warning
    # was left in place: scikit-learn's warning was ignored process-wide.
    X = np.random.RandomState(0).normal(size=(40, 3))
    refiner = IQRRefiner(_Held(), random_state=0)
    refiner.fit(pd.DataFrame(X, columns=["a", "b", "c"]))

    @contextlib.contextmanager
    def hold(held):
        refiner.estimator_.held = held
        yield

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the names warning itself
        before = _warning_settings()
        _overlapped(lambda: refiner.score_samples(X), hold)
        assert _warning_settings() == before


class _Threaded(OutlierMixin, BaseEstimator):
    """A detector that scores in a worker thread, with a refiner inside."""

    def __init__(self, inner=None):
        self.inner = inner

    def fit(self, X, y=None):
        self.inner_ = clone(self.inner).fit(X)
        self.offset_ = -1.0
        return self

    def score_samples(self, X):
        rows = np.asarray(X, dtype=float)
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self.inner_.score_samples, rows).result()


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_a_refiner_whose_detector_scores_in_threads_does_not_wait_on_itself():
    # The lock kept around the detector's scoring (arrays after a DataFrame
    # fit) was wanted again by the worker thread: a deadlock.
    X = np.random.RandomState(0).normal(size=(40, 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    inner = IQRRefiner(IsolationForest(n_estimators=10, random_state=0))
    refiner = IQRRefiner(_Threaded(inner), random_state=0).fit(frame)
    done = []
    worker = threading.Thread(
        target=lambda: done.append(refiner.score_samples(X)), daemon=True
    )
    worker.start()
    worker.join(30.0)
    assert done, "the scoring did not finish in 30 s"
    np.testing.assert_array_equal(done[0], refiner.score_samples(frame))


def test_scoring_leaves_the_fitted_net_untouched():
    # The float64 scoring swapped the net's parameters for float64 copies in
    # place; two threads scoring at once left those in the fitted net (and a
    # refit failed on mixed dtypes).
    X = np.random.RandomState(0).normal(size=(60, 6))
    det = FlowDetector(**TINY).fit(X)
    module = det.net_.module_
    seen = []
    module.register_forward_pre_hook(
        lambda *_: seen.append({p.dtype for p in module.parameters()})
    )
    expected = det.score_samples(X)
    assert seen and all(dtypes == {torch.float32} for dtypes in seen)
    results, threads = [], []
    for _ in range(2):
        threads.append(
            threading.Thread(
                target=lambda: results.extend(det.score_samples(X) for _ in range(20))
            )
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 40
    for scores in results:
        np.testing.assert_array_equal(scores, expected)
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_the_command_line_restores_the_streams_error_handlers(monkeypatch):
    # main() set surrogateescape on sys.stdout and sys.stderr for good.
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="backslashreplace")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert main([]) == 2
    assert (out.errors, err.errors) == ("strict", "backslashreplace")


def test_seeded_fits_in_two_threads_are_the_serial_fits():
    # torch's global generator is the process's: two seeded fits in threads
    # drew from each other's seeds (scores off by up to 0.1, varying from run
    # to run), and one's restore of the caller's generator undid the other's.
    X = np.random.RandomState(0).normal(size=(200, 4))
    params = dict(n_blocks=2, hidden_size=8, batch_size=16, device="cpu")

    def fit(seed, epochs):
        flow = FlowDetector(random_state=seed, max_epochs=epochs, **params)
        return flow.fit(X).score_samples(X[:5])

    serial = [fit(0, 10), fit(1, 30)]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(fit, (0, 1), (10, 30)))
    np.testing.assert_array_equal(torch.rand(3), expected)
    for a, b in zip(threaded, serial):
        np.testing.assert_array_equal(a, b)
