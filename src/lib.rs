//! The `verge` package: the laptop CLI (`src/main.rs`: `verge up`, `verge secret`), the
//! [`whep`] client, and the [`testkit`] that the end-to-end tests in `tests/` and the
//! benchmarks in `examples/` share.

pub mod testkit;
pub mod whep;
