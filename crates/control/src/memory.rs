//! Giving freed memory back to the operating system after a configuration generation is gone.
//!
//! A change makes a whole new generation (the validated load, the snapshot) while the old one is
//! still in force; once every proxy has moved on, the old one is freed — but glibc keeps freed
//! pages in its per-thread arenas, so the control plane's RSS would only ever grow with each
//! change. `malloc_trim` returns those pages.

/// Return freed heap pages to the operating system (glibc only; elsewhere the allocator is
/// left to do as it does). The one place the control plane calls C: glibc has no other way to
/// be asked for this.
#[allow(unsafe_code)]
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim takes no pointers and only reorganizes the allocator's own free
        // lists; it is safe to call at any time from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}
