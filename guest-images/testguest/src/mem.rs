//! The C memory functions the compiler calls (no libc here).
//!
//! Written in inline assembly or with volatile accesses, so the compiler cannot turn their
//! bodies back into calls to themselves. Ring 3 only: string instructions are native there.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest`.
///
/// # Safety
/// `src` and `dest` are valid for `n` bytes and do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; rep movsb copies forward (DF is clear in the ABI).
    unsafe {
        asm!("rep movsb", inout("rdi") dest => _, inout("rsi") src => _, inout("rcx") n => _,
             options(nostack, preserves_flags))
    };
    dest
}

/// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
/// `src` and `dest` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest is below src, or beyond the end of src: a forward copy never reads a byte
        // it has already overwritten.
        // SAFETY: the caller's contract.
        unsafe {
            asm!("rep movsb", inout("rdi") dest => _, inout("rsi") src => _, inout("rcx") n => _,
                 options(nostack, preserves_flags))
        };
    } else if n > 0 {
        // Overlap with dest above src: copy backwards, from the last byte down.
        let (dest_last, src_last) = (dest.wrapping_add(n - 1), src.wrapping_add(n - 1));
        // SAFETY: the caller's contract; DF is restored before the block ends.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rdi") dest_last => _, inout("rsi") src_last => _,
                 inout("rcx") n => _, options(nostack))
        };
    }
    dest
}

/// Fills `n` bytes at `dest` with `c`.
///
/// # Safety
/// `dest` is valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("rep stosb", inout("rdi") dest => _, inout("rcx") n => _, in("al") c as u8,
             options(nostack, preserves_flags))
    };
    dest
}

/// Compares `n` bytes: negative, zero or positive as `a` is below, equal to or above `b`.
///
/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n, the caller's contract; volatile keeps this a loop.
        let x = unsafe { a.wrapping_add(i).read_volatile() };
        // SAFETY: as above.
        let y = unsafe { b.wrapping_add(i).read_volatile() };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Like memcmp, but only zero or non-zero matters.
///
/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}
