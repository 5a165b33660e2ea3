//! Allocator settings for processes that move data in 4 MiB pieces.
//!
//! glibc serves allocations this large with a fresh `mmap` and gives the
//! memory back at `free`, so every read or write buffer costs a thousand
//! page faults and zeroed pages: in a profile of a 1 GiB native read that
//! was a third of the client's CPU. Raising the mmap threshold keeps such
//! buffers in the heap, where freed ones are reused; the trim threshold
//! still returns a heap's free top past 256 MiB to the system, so memory
//! stays bounded by what is in flight.

/// Applies the settings to this process (binaries call it first thing;
/// libraries never do).
pub fn tune_allocator() {
    // The workspace denies unsafe code; mallopt has no safe wrapper.
    #[allow(unsafe_code)]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before the process starts any thread.
    unsafe {
        // 32 MiB is glibc's largest mmap threshold on 64-bit systems.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
