//! Checks of the files in `packaging/` against the code; see `tests/`.
