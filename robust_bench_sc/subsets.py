"""Which images a number is on, in words: the one place that spells "first N CIFAR-10 test images".

Every figure says which images it is on, in the dataset's own words (``images``: "CIFAR-10
test images" for the default, "CIFAR-100 test images", "test images of mine.npz"). :func:`describe_subset` writes it for a count (``first 200 CIFAR-10 test
images``), several counts (``first 50 or 200 ...``), the image indices a run evaluated (the
first N, or else their count and range) and a seeded random draw of correctly classified
images among them (ZOO); :func:`short_subset` drops the dataset name where a table cell or a
legend already says it. This module imports nothing of ours (and no torch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

IMAGES = "CIFAR-10 test images"


def describe_subset(n_images: int | Iterable[int] | None = None, *, index: Iterable | None = None,
                    drawn: int | None = None, images: str = IMAGES) -> str:
    """The images a figure is on, in words.

    - ``describe_subset(200)``: ``first 200 CIFAR-10 test images``;
    - ``describe_subset([50, 200])``: ``first 50 or 200 CIFAR-10 test images`` (sorted, once each);
    - ``describe_subset(index=idx)``: the first N when ``idx`` is 0..N-1, else
      ``3 CIFAR-10 test images (indices 4–9)``; ``no images`` when empty;
    - ``drawn=k`` (with either): ``k seeded random correctly classified images of the …``;
    - ``images``: what the images are (the dataset's own words, :attr:`robust_bench_sc.data.Split.images`,
      ``run.json``'s ``images``): ``first 500 CIFAR-100 test images``.
    """
    if (n_images is None) == (index is None):
        raise TypeError("describe_subset: give n_images or index, not both or neither")
    if index is not None:
        idx = sorted({int(i) for i in index})
        if not idx:
            text = "no images"
        elif idx == list(range(len(idx))):
            text = f"first {len(idx)} {images}"
        else:
            text = f"{len(idx)} {images} (indices {idx[0]}–{idx[-1]})"
    else:
        assert n_images is not None
        ns = sorted({int(n) for n in n_images}) if isinstance(n_images, Iterable) else [int(n_images)]
        text = f"first {' or '.join(str(n) for n in ns)} {images}" if ns else "no images"
    if drawn is not None:
        return f"{drawn} seeded random correctly classified images of the {text}"
    return text


def short_subset(text: str) -> str:
    """``first 200 CIFAR-10 test images`` → ``first 200`` (any dataset's words); any other
    description as it is (it names more than a count: a range of indices, a random draw)."""
    m = re.match(r"first \d+(?: or \d+)*", text)
    return m.group(0) if m else text


__all__ = ["IMAGES", "describe_subset", "short_subset"]
