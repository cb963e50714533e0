//! The only module with `unsafe`: batched UDP I/O and the media workers.
//!
//! - [`udp`]: leg sockets, `recvmmsg` into fixed buffers, `sendmmsg` of header + shared body.
//! - [`uring`]: the io_uring send backend (one submission per fan-out), probed at start.
//! - [`worker`]: one thread per core owning its sockets and a [`crate::media::shard::Shard`].
//! - [`engine`]: the [`Engine`] handle the control plane calls.

pub mod engine;
pub mod stamp;
pub mod udp;
pub mod uring;
pub mod worker;

pub use engine::{Engine, EngineError};

use std::os::fd::AsRawFd;

/// Raises the soft limit on open files to the hard limit: every leg holds one or two sockets,
/// so a busy node needs thousands. Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Opts the process out of transparent huge pages (`prctl(PR_SET_THP_DISABLE)`). mimalloc asks
/// for huge pages on its arenas, and the first touch of each fresh 2 MiB page has the kernel zero
/// it inside the thread that touched it: the SIP thread stalled 5–7 ms of CPU at a time, inside
/// whichever message happened to allocate then, whenever the node's memory grew (BENCHMARKS.md,
/// "Floor-grant latency"). With 4 KiB pages the same growth costs microseconds at a time.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sizes the process's file-descriptor table for `descriptors` now. The kernel grows the table
/// by doubling when a new descriptor does not fit, and in a multi-threaded process each growth
/// waits for an RCU grace period inside the `socket()` call that needed it: the SIP thread,
/// binding a new leg's sockets, slept 5–15 ms at a time while the leg pool grew (BENCHMARKS.md,
/// "Floor-grant latency"). Growing it once at start, to what the media port range can use,
/// moves that wait out of the traffic. Capped at the open-file limit; returns the size asked.
pub fn reserve_descriptors(descriptors: u64) -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let highest = descriptors.min(limit.rlim_cur.saturating_sub(1)).min(i32::MAX as u64);
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: duplicates a descriptor we own onto the lowest free one at or above `highest`
    // (which makes the kernel size the table for it) and closes the duplicate at once.
    let duplicate = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest as libc::c_int) };
    if duplicate < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `duplicate` is ours and used nowhere else.
    unsafe { libc::close(duplicate) };
    Ok(highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|line| line.starts_with("FDSize:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn the_process_opts_out_of_transparent_huge_pages() {
        disable_transparent_huge_pages().unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|line| line.starts_with("THP_enabled:"));
        // Kernels before 5.0 do not show the flag; where they do, it is off now.
        if let Some(line) = line {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
    }

    #[test]
    fn the_descriptor_table_is_sized_up_front() {
        raise_fd_limit().unwrap();
        let asked = reserve_descriptors(6000).unwrap();
        assert!(asked >= 1000, "the open-file limit allows at least that: {asked}");
        assert!(table_size() > asked, "FDSize {} for {asked}", table_size());
    }
}
