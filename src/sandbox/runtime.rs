//! The process-wide half of the sandbox: one wasmtime `Engine`, the interpreter compiled once
//! (and cached on disk as a `.cwasm`), and an `InstancePre` with every import resolved, so that a
//! fresh instance per execution costs a fraction of a millisecond.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter,
};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::SandboxError;
use crate::assets::{fetch, python::PythonAssets, AssetError};

/// Epoch tick: the granularity of wall-clock timeouts.
pub(crate) const TICK: Duration = Duration::from_millis(5);

/// Host state of one execution.
pub(crate) struct GuestState {
    pub wasi: WasiP1Ctx,
    pub memory: MemoryCap,
}

/// Caps linear memory and remembers whether the guest hit the cap, so a `MemoryError` can be
/// told apart from an ordinary failure.
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    pub denied: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Engine, compiled interpreter and linker, shared by every execution.
pub(crate) struct Runtime {
    pub engine: Engine,
    pub pre: InstancePre<GuestState>,
    pub stdlib_dir: PathBuf,
    ticking: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

fn engine_config(slots: u32, memory_limit: usize) -> Config {
    let mut config = Config::new();
    // Pooled instance slots: a fresh instance reuses a slot whose pages stay mapped, instead of
    // an mmap, ~100 MB of copy-on-write faults and an munmap per execution.
    let mut pooling = PoolingAllocationConfig::new();
    pooling
        .total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .max_memory_size(memory_limit)
        .max_core_instance_size(16 << 20)
        .table_elements(1 << 16)
        .linear_memory_keep_resident(256 << 20)
        .table_keep_resident(1 << 20);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    // The interpreter is built with wasm exception handling (ASSETS.md).
    config.wasm_exceptions(true);
    config.epoch_interruption(true);
    // Deep but legal Python recursion needs more than the 512 KiB default; guest threads have
    // 16 MiB native stacks, so overflow still traps instead of killing the host.
    config.max_wasm_stack(8 << 20);
    // Only checked against max_wasm_stack: no guest runs on an async fiber.
    config.async_stack_size(9 << 20);
    config
}

impl Runtime {
    /// Builds the runtime from installed assets, compiling the interpreter on first use.
    /// `slots` is the most instances alive at once; `memory_limit` the largest memory, in bytes.
    pub fn new(
        python: &PythonAssets,
        slots: u32,
        memory_limit: usize,
    ) -> Result<Self, SandboxError> {
        let engine =
            Engine::new(&engine_config(slots, memory_limit)).map_err(SandboxError::engine)?;
        let module = load_or_compile(&engine, python)?;
        let mut linker: Linker<GuestState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut GuestState| &mut s.wasi)
            .map_err(SandboxError::engine)?;
        // The build's one custom import (host tools); no tool is offered, so it always refuses.
        linker
            .func_wrap("host", "call", |_: i32, _: i32, _: i32, _: i32| -> i32 {
                -1
            })
            .map_err(SandboxError::engine)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(SandboxError::engine)?;
        let ticking = Arc::new(AtomicBool::new(true));
        spawn_epoch_ticker(&engine, ticking.clone());
        Ok(Self {
            engine,
            pre,
            stdlib_dir: python.stdlib_dir(),
            ticking,
        })
    }
}

/// Advances the engine's epoch every `TICK` until the runtime is dropped.
fn spawn_epoch_ticker(engine: &Engine, ticking: Arc<AtomicBool>) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("azr-epoch".into())
        .spawn(move || {
            while ticking.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch thread");
}

/// Cache key of a compiled module: valid only for this wasmtime version, engine config, CPU
/// features (all in `precompile_compatibility_hash`) and this exact wasm file.
fn cache_path(engine: &Engine, python: &PythonAssets) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let key = format!(
        "{}-{:016x}",
        &python.snapshot_sha256()[..16],
        hasher.finish()
    );
    python
        .cache_dir()
        .join(format!("python-snapshot-{key}.cwasm"))
}

fn load_or_compile(engine: &Engine, python: &PythonAssets) -> Result<Module, SandboxError> {
    let path = cache_path(engine, python);
    if path.exists() {
        match deserialize(engine, &path) {
            Ok(module) => return Ok(module),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "compiled cache unusable; recompiling");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    fetch::install_once(&path, |tmp| compile_to(engine, &python.snapshot(), tmp))?;
    deserialize(engine, &path).map_err(SandboxError::engine)
}

fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Module> {
    // SAFETY: the file was produced by `Engine::precompile_module` for an engine with this
    // compatibility hash (part of the file name), written by us under `$AZR_HOME` and renamed into
    // place only when complete; wasmtime also checks its header and version on load.
    unsafe { Module::deserialize_file(engine, path) }
}

fn compile_to(engine: &Engine, wasm: &Path, out: &Path) -> Result<(), AssetError> {
    eprintln!(
        "azr: compiling the sandbox's Python once (about a minute; cached in {})",
        out.parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    let bytes = std::fs::read(wasm).map_err(AssetError::io("reading", wasm))?;
    let started = std::time::Instant::now();
    let compiled = engine
        .precompile_module(&bytes)
        .map_err(|e| AssetError::Io {
            action: "compiling",
            path: wasm.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    tracing::info!(elapsed = ?started.elapsed(), "compiled the interpreter");
    std::fs::write(out, compiled).map_err(AssetError::io("writing", out))
}
