//! A fixed set of guest threads with 16 MiB native stacks. Guest code only ever runs here: wasm
//! executes on the host's stack, and deep guest recursion on a small stack can kill the process
//! (ASSETS.md). The pool also bounds how many interpreters run at once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

const GUEST_STACK: usize = 16 << 20;

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct Pool {
    queue: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        let workers = (0..threads.max(1))
            .map(|i| {
                let jobs = jobs.clone();
                std::thread::Builder::new()
                    .name(format!("azr-guest-{i}"))
                    .stack_size(GUEST_STACK)
                    .spawn(move || loop {
                        let job = match jobs.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            queue: Some(queue),
            workers,
        })
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Queues `work` on a guest thread now (not when first polled, so a caller can start many
    /// and go on with other work); the future yields its result, a panic in it as `Err`.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, String>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let submitted = self.submit(Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(work)));
        }));
        async move {
            submitted?;
            rx.await
                .map_err(|_| "guest thread went away".to_string())?
                .map_err(panic_message)
        }
    }

    /// Like [`Pool::run`], blocking the calling (non-async) thread.
    pub fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(work)));
        }))?;
        rx.recv()
            .map_err(|_| "guest thread went away".to_string())?
            .map_err(panic_message)
    }

    fn submit(&self, job: Job) -> Result<(), String> {
        self.queue
            .as_ref()
            .and_then(|q| q.send(job).ok())
            .ok_or_else(|| "sandbox pool is shut down".to_string())
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic in guest thread".to_string())
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.queue.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
