//! `exp` over a slice, 16 lanes at a time with AVX-512: libm's scalar `expf` was 4-5% of
//! decode steps over long prompts and of prompt passes (attention's softmax). Each lane
//! computes the same function of its own value, so an element's result does not depend on
//! where it sits in the slice (a row's bits stay the same in any batch).

/// `x = exp(x - shift)` for every element.
pub fn shifted_in_place(xs: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected.
        unsafe { avx512::shifted_in_place(xs, shift) };
        return;
    }
    scalar(xs, shift);
}

/// libm's exp, an element at a time.
fn scalar<T: num_traits::Float>(xs: &mut [T], shift: T) {
    xs.iter_mut().for_each(|x| *x = (*x - shift).exp());
}

/// [`shifted_in_place`] for f32, libm's scalar exp for f64: for ops generic over both.
pub trait Exps: Sized {
    fn exps(xs: &mut [Self], shift: Self);
}

impl Exps for f32 {
    fn exps(xs: &mut [f32], shift: f32) {
        shifted_in_place(xs, shift);
    }
}

impl Exps for f64 {
    fn exps(xs: &mut [f64], shift: f64) {
        scalar(xs, shift);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// exp(d) = 2^n · exp(r), n = round(d / ln 2), r = d - n ln 2 (ln 2 in two parts, so r is
    /// exact enough), exp(r) on |r| <= ln 2 / 2 by a degree-6 polynomial (Cephes' expf
    /// coefficients, ~1 ulp), 2^n applied with `vscalefps` (0 below the f32 range, inf above).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn shifted_in_place(xs: &mut [f32], shift: f32) {
        let shift = _mm512_set1_ps(shift);
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            let d = _mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), shift);
            _mm512_storeu_ps(c.as_mut_ptr(), exp(d));
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let mask = ((1u32 << tail.len()) - 1) as __mmask16;
            let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, tail.as_ptr()), shift);
            _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, exp(d));
        }
    }

    /// exp of each lane, as [`shifted_in_place`] computes it.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp(d: __m512) -> __m512 {
        // Past ±104 the result is 0 or inf either way; clamping keeps n an exact integer.
        let d = _mm512_min_ps(
            _mm512_max_ps(d, _mm512_set1_ps(-104.0)),
            _mm512_set1_ps(89.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(d, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), d);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        let e = _mm512_scalef_ps(e, n);
        // Below -104 exactly 0, as libm's expf gives there.
        let zero = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(d, _mm512_set1_ps(-104.0));
        _mm512_mask_mov_ps(e, zero, _mm512_setzero_ps())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_libm_to_two_ulp_and_is_the_same_in_any_lane() {
        let xs: Vec<f32> = (0..20_001).map(|i| -120.0 + i as f32 * 0.01).collect();
        let mut got = xs.clone();
        shifted_in_place(&mut got, 30.0);
        for (x, g) in xs.iter().zip(&got) {
            let want = (x - 30.0).exp();
            let ulp = (want.to_bits() as i64 - g.to_bits() as i64).abs();
            assert!(
                ulp <= 2 || (want < 1e-37 && *g < 1e-37),
                "exp({}) = {g}, libm {want}",
                x - 30.0
            );
        }
        // Each element alone (a masked tail of one) gives the same bits as in the long run.
        for (i, x) in xs.iter().enumerate().step_by(997) {
            let mut one = [*x];
            shifted_in_place(&mut one, 30.0);
            assert_eq!(one[0].to_bits(), got[i].to_bits(), "element {i}");
        }
    }
}
