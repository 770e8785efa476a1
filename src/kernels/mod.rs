//! CPU kernels the model's ops run on: the decode product (`matvec`, on AMX tiles where the
//! CPU has them: `amx`), gemm-backed products that write or accumulate in place (`gemm`; the
//! large f32 ones of training in bf16 when asked, on AMX tiles or with AVX-512 BF16:
//! `bf16_gemm`), the LM head's fused softmax statistics (`softmax`), attention's masked
//! softmax in place (`masked_softmax`, its exp vectorised: `exp`), a decode step's attention
//! over the KV cache (`decode_attention`), the MLP gate (`swiglu`), RMSNorm without a graph
//! (`norm`), and max and sums that vectorise (`reduce`). They know tensors and storage, not
//! the decoder.

pub(crate) mod amx;
pub(crate) mod bf16_gemm;
pub(crate) mod decode_attention;
pub(crate) mod exp;
pub(crate) mod gemm;
pub(crate) mod masked_softmax;
pub(crate) mod matvec;
pub(crate) mod norm;
pub(crate) mod reduce;
pub(crate) mod softmax;
pub(crate) mod swiglu;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Runs `f` on one of rayon's workers while the calling thread waits. A pass makes hundreds
/// of parallel products; started from outside the pool, each one wakes the workers and puts
/// the caller to sleep until they finish (a futex wake and, on a VM, an interrupt to another
/// core), while from inside it the worker takes its own share and the others steal the rest,
/// [`poll`]ing for them until `f` is done. Already on a worker, or for a pass on another
/// `device` (no CPU products to share, and pollers would only burn cores), `f` just runs.
pub fn on_workers<R: Send>(device: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    if !device.is_cpu() || rayon::current_thread_index().is_some() {
        return f();
    }
    let stop = AtomicBool::new(false);
    rayon::scope(|s| {
        let (origin, stop) = (rayon::current_thread_index(), &stop);
        for _ in 1..rayon::current_num_threads() {
            s.spawn(move |_| poll(stop, origin));
        }
        let _stop = Stop(stop);
        f()
    })
}

/// Takes the pool's tasks as they come until `stop`, never sleeping between them. A worker
/// that finds no work for a while sleeps, and the next parallel product has to wake it (a
/// futex and, on a VM, an interrupt): a batch-32 decode step switched threads ~300 times.
/// Does nothing on `origin`, the worker running the caller's `f`, should it take this job.
fn poll(stop: &AtomicBool, origin: Option<usize>) {
    if rayon::current_thread_index() == origin {
        return;
    }
    while !stop.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::thread::yield_now();
        }
    }
}

/// Sets its flag when dropped, so pollers stop even when `f` panics.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Calls `f` on ranges that cover `0..units` once, in parallel: each of the pool's threads
/// claims the next range as it frees up, large ranges first and smaller ones (down to `min`
/// units, the multiple every range but the last has) toward the end, so the threads finish a
/// product together. With eight fixed ranges a thread sat idle at the end of most decode
/// products, ~5% of a batch-32 step.
pub(crate) fn for_each_range(units: usize, min: usize, f: impl Fn(Range<usize>) + Sync) {
    let threads = rayon::current_num_threads();
    let next = AtomicUsize::new(0);
    let claim = |_| loop {
        let left = units.saturating_sub(next.load(Ordering::Relaxed));
        // Another thread may claim in between: the size is a guess, the claim is exact.
        let size = (left / (2 * threads)).next_multiple_of(min).max(min);
        let start = next.fetch_add(size, Ordering::Relaxed);
        if start >= units {
            return;
        }
        f(start..(start + size).min(units));
    };
    use rayon::prelude::*;
    (0..threads).into_par_iter().for_each(claim);
}

/// The f32 elements of a contiguous tensor on the CPU, or None for any other.
pub(crate) fn f32s<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(x)), Some((a, b))) => {
            Some(&x[a..b])
        }
        _ => None,
    }
}

/// An output pointer shared by parallel tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes its own elements of the output, never another's.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer; a method, so closures capture the whole (Sync) wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// What a product adds to its sums before it writes them: a bias (n) to every row, then a
/// residual (m, n) element by element, `(x · wᵀ + bias) + residual`: the order, and so the
/// bits, of the separate adds it spares (each a pass over y and a tensor).
#[derive(Clone, Copy, Default)]
pub(crate) struct Plus<'a> {
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
}

impl Plus<'_> {
    /// Adds to `y` (rows of n), for kernels that write their sums as they are.
    fn add_to(&self, y: &mut [f32], n: usize) {
        if let Some(bias) = self.bias {
            y.chunks_exact_mut(n)
                .for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b));
        }
        if let Some(residual) = self.residual {
            y.iter_mut().zip(residual).for_each(|(y, r)| *y += r);
        }
    }
}

/// Where a task's sums go in a product `y (m, n) = x · wᵀ` split over row blocks of `w`:
/// columns `first..` of y, one per row of the task's part of `w`, which only it writes.
#[derive(Clone, Copy)]
struct Columns<'a> {
    y: *mut f32,
    n: usize,
    first: usize,
    /// Added on the way out (AMX), or None where the caller adds it after.
    plus: Plus<'a>,
}

impl Columns<'_> {
    /// Column `first + c` of y's row `i`.
    ///
    /// # Safety
    /// The element must lie in y and belong to this task.
    unsafe fn at(&self, i: usize, c: usize) -> *mut f32 {
        self.y.add(i * self.n + self.first + c)
    }
}

/// The bit patterns of f32 values, for tests that want results equal to the bit (tests).
#[cfg(test)]
pub(crate) fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// [`bits`] of an f32 tensor's elements (tests).
#[cfg(test)]
pub(crate) fn tensor_bits(t: &candle_core::Tensor) -> Vec<u32> {
    bits(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
}

/// Largest absolute elementwise difference of two tensors of one shape, in f32 (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let diff = (a.to_dtype(candle_core::DType::F32).unwrap()
        - b.to_dtype(candle_core::DType::F32).unwrap())
    .unwrap();
    diff.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[cfg(test)]
mod tests {
    #[test]
    fn on_workers_runs_on_a_pool_worker_and_returns_what_it_computed() {
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "the test thread is no worker"
        );
        let (worker, sum) = super::on_workers(&candle_core::Device::Cpu, || {
            (rayon::current_thread_index(), (1..=4).sum::<i32>())
        });
        assert!(worker.is_some());
        assert_eq!(sum, 10);
        // From a worker, it runs in place.
        let nested = super::on_workers(&candle_core::Device::Cpu, || {
            let here = rayon::current_thread_index();
            super::on_workers(&candle_core::Device::Cpu, || {
                rayon::current_thread_index() == here
            })
        });
        assert!(nested);
    }

    #[test]
    fn a_pass_shares_its_tasks_with_the_other_workers_and_ends() {
        use rayon::prelude::*;
        if rayon::current_num_threads() < 2 {
            eprintln!("skipped: a pool of one worker has no one to share with");
            return;
        }
        for _ in 0..3 {
            let workers: std::collections::HashSet<Option<usize>> =
                super::on_workers(&candle_core::Device::Cpu, || {
                    (0..64)
                        .into_par_iter()
                        .map(|_| {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                            rayon::current_thread_index()
                        })
                        .collect()
                });
            // Returning at all means the pollers saw the stop; tasks that sleep leave the
            // calling worker no chance to take them all.
            assert!(workers.len() > 1, "tasks ran on {workers:?} only");
        }
    }

    #[test]
    fn ranges_cover_every_unit_once_in_multiples_of_min_the_first_largest() {
        for (units, min) in [
            (0, 2),
            (1, 2),
            (7, 2),
            (72, 2),
            (9496, 2),
            (4864, 16),
            (30, 16),
        ] {
            let ranges = std::sync::Mutex::new(Vec::new());
            super::for_each_range(units, min, |r| ranges.lock().unwrap().push(r));
            let mut ranges = ranges.into_inner().unwrap();
            ranges.sort_by_key(|r| r.start);
            let mut at = 0;
            for r in &ranges {
                assert_eq!(r.start, at, "{units} units: gap or overlap at {at}");
                assert!(r.end > r.start && (r.len() % min == 0 || r.end == units));
                at = r.end;
            }
            assert_eq!(at, units, "{units} units: {ranges:?}");
            // Guided: none larger than the first (claimed from all the units left).
            if let Some(first) = ranges.first() {
                assert!(ranges.iter().all(|r| r.len() <= first.len()), "{ranges:?}");
            }
        }
    }
}
