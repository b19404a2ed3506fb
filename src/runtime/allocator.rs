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

/// The size in bytes from which glibc's malloc maps a block of its own,
/// returned to the system when freed, unless `MALLOC_MMAP_THRESHOLD_` says
/// otherwise: 128 KiB, glibc's initial value, kept fixed.
///
/// By default glibc raises the threshold to the size of the largest mapped
/// block freed so far (mallopt(3), `M_MMAP_THRESHOLD`). After one
/// `/metrics` render at 10,000 RunaiCredentials (several megabytes of text)
/// or one page of a list, such buffers come from the heap instead, where
/// the long-lived objects around them keep the freed space resident.
pub const MALLOC_MMAP_THRESHOLD: i32 = 128 * 1024;

/// Limits glibc's malloc to [`MALLOC_ARENAS`] arenas and fixes its mmap
/// threshold at [`MALLOC_MMAP_THRESHOLD`], each unless the environment
/// variable glibc reads for it is set. Call it before any thread is
/// started. Does nothing with another C library.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, parameter, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, MALLOC_ARENAS),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MALLOC_MMAP_THRESHOLD,
        ),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt takes two integers and only sets a parameter
            // of the allocator; glibc documents it as MT-Unsafe, and no
            // other thread exists yet to race with it.
            #[allow(unsafe_code)]
            unsafe {
                libc::mallopt(parameter, value);
            }
        }
    }
}
