//! Gives back the pages of the agent's own binary that only start-up needed: once the agent
//! serves, its mappings of the executable are paged out, and what the idle agent runs (its
//! heartbeat, the request path) is paged in again as it runs.
//!
//! The agent's idle memory is mostly code, not heap: start-up (configuration, provisioning, keys,
//! the fact pack, TLS) touches megabytes of the binary that an idle agent never runs again, and
//! the kernel maps each page it touched, with its neighbours (fault-around), for as long as the
//! process lives. Those pages are clean and backed by the file, so giving them back costs a page
//! fault when one is needed again and loses nothing. Only the executable's own read-only mappings
//! are advised; heap, stacks and relocated data stay as they are.
//!
//! Paged out alone, the mappings fill up again faster than the idle agent needs them: each page a
//! heartbeat touches is read back with the read-ahead window around it (128 KiB), and the kernel
//! maps every neighbour that read brought in. So the mappings are also marked random-access
//! (`MADV_RANDOM`): from then on a page is read back alone, when it is touched.

use std::ffi::c_void;
use std::io;
use std::path::Path;

/// How long after the agent is ready its start-up pages are given back: its first heartbeat and
/// fact pack are out by then.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Pages out the read-only mappings of this process's executable (`MADV_PAGEOUT`) and turns off
/// read-ahead for them (`MADV_RANDOM`); the bytes of the mappings advised.
pub fn release_startup_pages() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for (start, end) in read_only_mappings_of(&maps, &exe) {
        let len = end - start;
        for advice in [libc::MADV_PAGEOUT, libc::MADV_RANDOM] {
            // SAFETY: the range is a whole mapping of this process, read from /proc/self/maps: a
            // clean, file-backed, read-only one, which paging out only drops until its next
            // touch, and which read-ahead advice does not change at all.
            let rc = unsafe { libc::madvise(start as *mut c_void, len, advice) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        advised += len;
    }
    Ok(advised)
}

/// Returns the heap memory that start-up freed to the system (`malloc_trim`): glibc keeps freed
/// chunks in its arenas for reuse, and an idle agent would carry them resident for good.
pub fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free chunks of the allocator's own arenas to the kernel;
    // it takes the arenas' locks and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The address ranges of the read-only mappings of `exe` in `maps` (the text of
/// `/proc/<pid>/maps`): `start-end perms offset dev inode path` a line.
fn read_only_mappings_of(maps: &str, exe: &Path) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3)?;
            // A path with more after it (` (deleted)`, spaces) is passed over.
            if fields.next().is_some() || Path::new(path) != exe || perms.contains('w') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_read_only_mappings_are_taken() {
        let maps = "\
55d0c0000000-55d0c0400000 r--p 00000000 fd:01 42 /usr/bin/execmesh-node-agent
55d0c0400000-55d0c1000000 r-xp 00400000 fd:01 42 /usr/bin/execmesh-node-agent
55d0c1000000-55d0c1100000 rw-p 01000000 fd:01 42 /usr/bin/execmesh-node-agent
55d0c2000000-55d0c2100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000100000 r-xp 00000000 fd:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000300000 r--p 00000000 fd:01 43 /usr/bin/execmesh-node-agent (deleted)
";
        let exe = Path::new("/usr/bin/execmesh-node-agent");
        assert_eq!(
            read_only_mappings_of(maps, exe),
            [
                (0x55d0c0000000, 0x55d0c0400000),
                (0x55d0c0400000, 0x55d0c1000000)
            ]
        );
    }

    #[test]
    fn this_process_pages_out_its_own_executable() {
        let advised = release_startup_pages().expect("madvise MADV_PAGEOUT");
        assert!(advised > 0, "no mapping of the test binary was advised");
        // Read-ahead is off for them from then on: the kernel lists `rr` (random read) among
        // each advised mapping's flags.
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
        let exe = std::fs::read_link("/proc/self/exe").expect("read exe link");
        let advised = read_only_mappings_of(&smaps, &exe);
        assert!(
            !advised.is_empty(),
            "smaps lists no read-only mapping of the test binary"
        );
        for (start, _) in advised {
            let header = format!("{start:08x}-");
            let flags = smaps
                .lines()
                .skip_while(|l| !l.starts_with(&header))
                .find_map(|l| l.strip_prefix("VmFlags:"))
                .expect("the mapping's VmFlags line");
            assert!(
                flags.split_whitespace().any(|f| f == "rr"),
                "mapping at {start:x} is not marked random-access: {flags}"
            );
        }
    }
}
