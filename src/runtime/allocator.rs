//! How the C allocator is set up before the first thread starts.

/// The number of glibc malloc arenas this process uses unless
/// `MALLOC_ARENA_MAX` says otherwise.
///
/// glibc gives a thread that finds the arenas busy an arena of its own, up
/// to eight per core (mallopt(3), `M_ARENA_MAX`). Objects cached for the
/// whole run and buffers freed a moment later then interleave across
/// several heaps, and the freed space stays resident. At 10,000
/// RunaiCredentials two arenas held about 4 MiB less than the default.
pub const MALLOC_ARENAS: i32 = 2;

/// Limits glibc's malloc to [`MALLOC_ARENAS`] arenas, unless the
/// `MALLOC_ARENA_MAX` environment variable sets its own limit (glibc reads
/// that one itself). Call it before any thread is started. Does nothing
/// with another C library.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers and only sets a parameter of
        // the allocator; glibc documents it as MT-Unsafe, and no other
        // thread exists yet to race with it.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}
