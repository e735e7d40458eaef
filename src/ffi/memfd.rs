//! An anonymous file in memory (`memfd_create`): what a SPEAK's spilled
//! audio is written to unless `spill_dir` names a directory.
//!
//! Its pages are shared memory (`Shmem` in /proc/meminfo, charged to the
//! process's cgroup like page cache), not in the process's RSS, since
//! nothing maps them: the spill reads and writes with `pread`/`pwrite`.
//! Unlike a file on a disk's file system it has no inode there to allocate
//! and evict (on an ext4 without a journal the allocation scans past every
//! inode freed in the last seconds: 6-9 % of the workers' CPU in benches
//! [10] and [13]), and the kernel never writes its pages to a disk.
//!
//! Not FFI with UniMRCP, but `unsafe` lives in this module.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// A new, empty memory file named `name` (a label only, seen in
/// /proc/PID/fd as `/memfd:NAME (deleted)`), close-on-exec and sealed
/// against being made executable where the kernel knows that seal (6.3 and
/// later; a kernel with `vm.memfd_noexec=2` refuses a memory file without
/// it).
pub fn memory_file(name: &CStr) -> io::Result<File> {
    match create(name, libc::MFD_CLOEXEC | libc::MFD_NOEXEC_SEAL) {
        // Before 6.3 the seal's flag is unknown: EINVAL.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => create(name, libc::MFD_CLOEXEC),
        made => made,
    }
}

fn create(name: &CStr, flags: libc::c_uint) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string for the call; the
    // kernel copies it and returns a new descriptor (or -1) that nothing
    // else owns.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else: the File
    // takes it over and closes it once.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn a_memory_file_reads_back_what_was_written_and_empties() {
        let file = memory_file(c"elevenlabs-test").unwrap();
        file.write_all_at(&[7u8; 10_000], 4_096).unwrap();
        let mut back = vec![0u8; 14_096];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..4_096].iter().all(|&b| b == 0) && back[4_096..].iter().all(|&b| b == 7));
        file.set_len(0).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0);
        assert_eq!(file.read_at(&mut back, 0).unwrap(), 0, "emptied");
    }

    #[test]
    fn a_memory_file_is_close_on_exec_and_named_in_proc() {
        use std::os::fd::AsRawFd;
        let file = memory_file(c"elevenlabs-test").unwrap();
        // SAFETY: F_GETFD on a descriptor this test owns.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert_eq!(link.to_string_lossy(), "/memfd:elevenlabs-test (deleted)");
    }
}
