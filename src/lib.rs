//! azr: Absolute Zero self-play reasoning, in Rust. One model proposes Python tasks and solves
//! them; every task and answer is checked by running the code in a WASI sandbox.
//!
//! Modules, in the order dependencies flow: `assets` (provisioning under `$AZR_HOME`),
//! `sandbox` (running untrusted Python), `tasks` (prompts, parsing, validation, rewards),
//! `buffer` (the SQLite curriculum), `config` (TOML run configuration), `bench`.

pub mod assets;
pub mod bench;
pub mod buffer;
pub mod config;
pub mod durable;
pub mod eval;
pub mod generate;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod report;
pub mod rl;
pub mod sandbox;
pub mod selfplay;
pub mod tasks;
