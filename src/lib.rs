//! The `verge` package: the CLI (`src/main.rs`: `verge up`, `verge secret`, and [`cli`]'s
//! commands against a manager's API) and the [`whep`] client. The harness that the end-to-end
//! tests in `tests/` and the benchmarks in `examples/` share is the `verge-testkit` crate
//! (`testkit/`), a dev-dependency only.

pub mod cli;
pub mod whep;
