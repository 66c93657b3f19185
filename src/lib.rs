//! The `verge` package: the CLI (`src/main.rs`: `verge up`, `verge secret`, and [`cli`]'s
//! commands against a manager's API), the
//! [`whep`] client, and the [`testkit`] that the end-to-end tests in `tests/` and the
//! benchmarks in `examples/` share.

pub mod cli;
pub mod testkit;
pub mod whep;
