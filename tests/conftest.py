"""Shared fixtures: real data from ../shared (or $SCBENCH_DATA), real reference weights."""

from __future__ import annotations

import pytest
import torch

from robust_bench_sc.data import load_test
from robust_bench_sc.paths import data_dir, reference_dir


def pytest_report_header(config):
    return f"scbench data: {data_dir()} | reference: {reference_dir()}"


@pytest.fixture(scope="session")
def test_split():
    """The first 200 CIFAR-10 test images."""
    return load_test(200)


@pytest.fixture(scope="session")
def madry():
    from robust_bench_sc.plugins import build_defense

    torch.set_num_threads(max(1, torch.get_num_threads()))
    return build_defense("madry_pgd_at")


@pytest.fixture(scope="module")
def tiny_data():
    """48 real test images as (train, val) tensors for the trainers' tiny runs."""
    d = load_test(48)
    return (d.x[:32], d.y[:32]), (d.x[32:], d.y[32:])
