//! Shared helpers for Skiff integration tests live in `tests/`.
