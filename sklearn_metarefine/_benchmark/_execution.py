"""Executing the pending runs through joblib, locally or on a dask cluster."""

import importlib
from contextlib import contextmanager

import joblib
from tqdm.auto import tqdm

from .._torch_utils import resolve_device
from ._config import PATCH_MODELS, BenchmarkError, check_choice
from ._runs import Run, run_one
from ._storage import write_run

_DASK_MISSING = 'The dask backend needs dask and distributed: pip install "sklearn-metarefine[dask]"'


def check_execution(backend, scheduler, device):
    """Fail before any work when the backend or the device cannot be used."""
    _check_backend(backend, scheduler)
    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as error:
        raise BenchmarkError(str(error)) from error


def _check_backend(backend, scheduler):
    """Check the backend name, and for dask the scheduler and the install."""
    check_choice("backend", backend, ("loky", "dask"))
    if backend == "loky":
        if scheduler is not None:  # else every run was local, without a word
            raise BenchmarkError(
                f"A scheduler ({scheduler}) is used by backend='dask' only; add "
                "--backend dask to run on it, or drop --scheduler."
            )
        return
    if scheduler is None:
        raise BenchmarkError(
            "backend='dask' needs the address of a running dask.distributed "
            "scheduler (--scheduler tcp://HOST:8786), e.g. one started with "
            "`dask scheduler` and `dask worker tcp://HOST:8786`."
        )
    try:
        importlib.import_module("distributed")
    except ImportError as error:
        raise BenchmarkError(_DASK_MISSING) from error
    # Now, not after the output folder is claimed and the features computed.
    _connect(scheduler).close()


def _connect(scheduler):
    """A dask.distributed client of the scheduler at ``scheduler``."""
    import distributed
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import get_backend

    try:
        # Checked first: a Client made of a malformed address held the
        # interpreter's exit for a minute, closing itself.
        scheme, location = parse_address(scheduler)
        get_backend(scheme)
        if scheme != "inproc":
            parse_host_port(location)
        return distributed.Client(scheduler)
    except (OSError, ValueError, TypeError) as error:  # unreachable, malformed
        raise BenchmarkError(
            f"Cannot connect to the dask scheduler at {scheduler}: {error}"
        ) from error


@contextmanager
def _backend(backend, scheduler):
    """joblib's backend: loky here, or the dask.distributed cluster at ``scheduler``."""
    if backend == "loky":
        with joblib.parallel_config(backend="loky"):
            yield
        return
    with _connect(scheduler), joblib.parallel_config(backend="dask"):
        yield


def execute(
    pending,
    data,
    config,
    device,
    runs_folder,
    *,
    n_runs,
    n_jobs,
    backend,
    scheduler,
    progress,
):
    """Execute the pending runs on the backend, with a progress bar over the grid.

    Parameters
    ----------
    pending : list of Run
        The runs to execute.
    data : dict
        Of each category with pending runs, a dict of its labels ``"y"``, its
        ``"split"``, its ``"features"`` (None when no image-level run is
        pending), its ``"patches"`` and ``"masks"`` (None when no patch run
        is pending).
    config : dict
        A resolved configuration.
    device : str
        Where the flows train.
    runs_folder : path
        Folder of the run records.
    n_runs : int
        Runs in the grid, finished ones included, for the progress bar.
    n_jobs, backend, scheduler, progress
        As in :func:`run_benchmark`.
    """
    with (
        _backend(backend, scheduler),
        tqdm(
            total=n_runs,
            initial=n_runs - len(pending),
            desc="metarefine benchmark",
            unit="run",
            disable=not progress,
        ) as bar,
    ):
        _execute(pending, data, config, device, n_jobs, runs_folder, bar)


def _execute(pending, data, config, device, n_jobs, runs_folder, progress):
    """Run the pending runs through joblib, writing each result as it arrives."""
    jobs = (_job(run, data[run.category], config, device) for run in pending)
    results = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs)
    for record in results:
        run = Run(**{field: record[field] for field in Run.__dataclass_fields__})
        write_run(runs_folder, run, record)
        progress.update()


def _job(run, category, config, device):
    """run_one on the category's features of the model's kind: patch grids
    and the defect masks for the patch models, pooled vectors otherwise."""
    if run.model in PATCH_MODELS:
        arguments = (run, category["patches"], category["y"], category["split"])
        return joblib.delayed(run_one)(
            *arguments, config, device, masks=category["masks"]
        )
    arguments = (run, category["features"], category["y"], category["split"])
    return joblib.delayed(run_one)(*arguments, config, device)
