"""scikit-learn's bundled digits as a one-class anomaly detection dataset."""

from numbers import Integral

import numpy as np
from sklearn.datasets import load_digits
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval, validate_params

# The digits are counts of "on" pixels in 4 x 4 blocks of a 32 x 32 bitmap.
_MAX_COUNT = 16

_DESCR = """\
.. _digits_anomaly_dataset:

Digits as anomaly detection
---------------------------

scikit-learn's bundled copy of the test set of the UCI "Optical Recognition
of Handwritten Digits" data: 1797 real 8 x 8 scans of handwritten digits
(about 180 of each digit), shipped with scikit-learn, so no download is
needed. Each pixel counts the "on" pixels of a 4 x 4 block of a 32 x 32
bitmap (0..16).

One digit is declared normal; every other digit is an anomaly, so about 90%
of the samples are anomalous. Use :func:`make_contaminated` to draw a
training set with a chosen share of anomalies and a balanced test set.

- ``images``: uint8, the counts scaled to 0..255 (white digit on black), the
  form an image backbone expects.
- ``data``: float64, the counts divided by 16 (0..1), one row of 64 pixels per
  image.
- ``target``: 1 for an anomaly (any other digit), 0 for the normal digit.
- ``digit``: the original digit label.

References
~~~~~~~~~~
E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI
Machine Learning Repository, 1998.
"""


@validate_params(
    {"normal_digit": [Interval(Integral, 0, 9, closed="both")]},
    prefer_skip_nested_validation=True,
)
def load_digits_anomaly(normal_digit=0):
    """Load scikit-learn's digits with one digit normal and the rest anomalous.

    The data ship with scikit-learn: this works offline and in a second.

    Parameters
    ----------
    normal_digit : int, default=0
        The digit (0 to 9) that counts as normal.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        images : ndarray of shape (1797, 8, 8), dtype=uint8
            The scans, pixel counts 0..16 scaled and rounded to 0..255.
        data : ndarray of shape (1797, 64), dtype=float64
            The scans flattened, pixel counts divided by 16 (0..1).
        target : ndarray of shape (1797,), dtype=int64
            1 for an anomaly (a digit other than `normal_digit`), 0 for normal.
        target_names : ndarray of shape (2,)
            ``["normal", "anomalous"]``, indexed by `target`.
        digit : ndarray of shape (1797,), dtype=int64
            The digit each scan shows.
        normal_digit : int
            The digit that counts as normal.
        DESCR : str
            Description of the dataset.

    See Also
    --------
    sklearn.datasets.load_digits : The same scans as a 10-class dataset.
    make_contaminated : Draw a contaminated training set and a balanced test
        set from `target`.

    Examples
    --------
    >>> from sklearn_metarefine.datasets import load_digits_anomaly
    >>> digits = load_digits_anomaly(normal_digit=3)
    >>> digits.images.shape, digits.images.dtype
    ((1797, 8, 8), dtype('uint8'))
    >>> int(digits.images.max()), float(digits.data.max())
    (255, 1.0)
    >>> int((digits.target == 0).sum()), int((digits.digit == 3).sum())
    (183, 183)
    """
    digits = load_digits()
    counts = digits.images
    images = np.rint(counts * (255 / _MAX_COUNT)).astype(np.uint8)
    digit = digits.target.astype(np.int64)
    return Bunch(
        images=images,
        data=digits.data / _MAX_COUNT,
        target=(digit != normal_digit).astype(np.int64),
        target_names=np.array(["normal", "anomalous"]),
        digit=digit,
        normal_digit=normal_digit,
        DESCR=_DESCR,
    )
