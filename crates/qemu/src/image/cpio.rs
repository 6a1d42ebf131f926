//! Writer of the "newc" cpio format (magic `070701`), the format Linux unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (magic plus thirteen 8-digit hex fields), the NUL-ended
//! name padded with NULs to a multiple of 4 bytes (counting the header), then the data padded to a
//! multiple of 4. The archive ends with the entry `TRAILER!!!`.
//!
//! Invariants kept by [`CpioWriter`]:
//! - names are relative (a leading `/` is dropped), non-empty, and contain no NUL and no `..`;
//! - every entry gets its own inode number (no hard links), starting at 1;
//! - all timestamps are 0 and owners are root, so the same input gives the same bytes;
//! - nothing but the trailer follows [`CpioWriter::finish`], which consumes the writer.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const PERM_MASK: u32 = 0o7777;

/// Streams a newc cpio archive into `W`.
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
}

/// The fields of one header that vary between entries.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            offset: 0,
        }
    }

    /// A directory with permission bits `perm` (e.g. `0o755`).
    pub(crate) fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (perm & PERM_MASK), 2, b"", (0, 0))
    }

    /// A regular file with permission bits `perm` and contents `data`.
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (perm & PERM_MASK), 1, data, (0, 0))
    }

    /// A symbolic link at `path` pointing to `target`.
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        if target.is_empty() || target.contains('\0') {
            return Err(invalid(format!(
                "symlink target {target:?} of {path:?} is empty or contains NUL"
            )));
        }
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0))
    }

    /// A character device node `major:minor` with permission bits `perm`.
    pub(crate) fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(path, S_IFCHR | (perm & PERM_MASK), 1, b"", (major, minor))
    }

    /// Writes the trailer and returns the inner writer (not flushed beyond what `W` does itself).
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.write_entry(
            &Header {
                name: TRAILER,
                mode: 0,
                nlink: 1,
                size: 0,
                rdev: (0, 0),
            },
            0,
            b"",
        )?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty()
            || name.contains('\0')
            || name == TRAILER
            || name.split('/').any(|part| part == "..")
        {
            return Err(invalid(format!("invalid cpio entry name {path:?}")));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| invalid(format!("{path:?} is too large for cpio (over 4 GiB)")))?;
        let ino = self.next_ino;
        self.next_ino = self
            .next_ino
            .checked_add(1)
            .ok_or_else(|| invalid("too many cpio entries".to_owned()))?;
        self.write_entry(
            &Header {
                name,
                mode,
                nlink,
                size,
                rdev,
            },
            ino,
            data,
        )?;
        Ok(())
    }

    fn write_entry(&mut self, header: &Header<'_>, ino: u32, data: &[u8]) -> io::Result<()> {
        let namesize = u32::try_from(header.name.len() + 1)
            .map_err(|_| invalid("cpio entry name too long".to_owned()))?;
        let fields = [
            ino,
            header.mode,
            0, // uid
            0, // gid
            header.nlink,
            0, // mtime
            header.size,
            0, // devmajor
            0, // devminor
            header.rdev.0,
            header.rdev.1,
            namesize,
            0, // check
        ];
        let mut head = String::with_capacity(HEADER_LEN);
        head.push_str(MAGIC);
        for field in fields {
            head.push_str(&format!("{field:08x}"));
        }
        debug_assert_eq!(head.len(), HEADER_LEN);
        self.put(head.as_bytes())?;
        self.put(header.name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.offset % 4) as usize;
        if rem == 0 {
            Ok(())
        } else {
            self.put(&[0; 3][..4 - rem])
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// One parsed entry; only tests read archives back.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) mode: u32,
    pub(crate) nlink: u32,
    pub(crate) rdev: (u32, u32),
    pub(crate) data: Vec<u8>,
}

/// Parses a newc archive up to its trailer; panics on malformed input (test helper).
#[cfg(test)]
pub(crate) fn parse(bytes: &[u8]) -> Vec<Entry> {
    let align = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        let head = std::str::from_utf8(&bytes[at..at + HEADER_LEN]).expect("ascii header");
        assert_eq!(&head[..6], MAGIC, "magic at offset {at}");
        let field = |i: usize| {
            u32::from_str_radix(&head[6 + 8 * i..14 + 8 * i], 16).expect("hex header field")
        };
        let (mode, nlink, size, rdev, namesize) = (
            field(1),
            field(4),
            field(6),
            (field(9), field(10)),
            field(11),
        );
        let name_start = at + HEADER_LEN;
        let name_end = name_start + namesize as usize;
        assert_eq!(bytes[name_end - 1], 0, "name is NUL-terminated");
        let name = std::str::from_utf8(&bytes[name_start..name_end - 1])
            .expect("utf-8 name")
            .to_owned();
        let data_start = align(name_end);
        let data_end = data_start + size as usize;
        let data = bytes[data_start..data_end].to_vec();
        at = align(data_end);
        if name == TRAILER {
            assert_eq!(at, bytes.len(), "nothing after the trailer");
            return out;
        }
        out.push(Entry {
            name,
            mode,
            nlink,
            rdev,
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/bin", 0o755).expect("dir");
        w.file("bin/hello", 0o755, b"hello\n").expect("file");
        w.file("empty", 0o644, b"").expect("empty file");
        w.symlink("bin/sh", "hello").expect("symlink");
        w.char_device("dev/console", 0o600, 5, 1).expect("device");
        w.finish().expect("finish")
    }

    #[test]
    fn round_trip_through_own_parser() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/hello", "empty", "bin/sh", "dev/console"]
        );
        assert_eq!(entries[0].mode, 0o040_755);
        assert_eq!(entries[0].nlink, 2);
        assert_eq!(entries[1].mode, 0o100_755);
        assert_eq!(entries[1].data, b"hello\n");
        assert_eq!(entries[2].data, b"");
        assert_eq!(entries[3].mode, 0o120_777);
        assert_eq!(entries[3].data, b"hello");
        assert_eq!(entries[4].mode, 0o020_600);
        assert_eq!(entries[4].rdev, (5, 1));
    }

    #[test]
    fn same_input_gives_same_bytes() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        for bad in ["", "/", "a/../b", "nul\0", "TRAILER!!!"] {
            assert!(w.file(bad, 0o644, b"x").is_err(), "{bad:?} accepted");
        }
        assert!(w.symlink("link", "").is_err());
    }

    #[test]
    fn system_cpio_lists_and_extracts_the_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, sample()).expect("write archive");
        let run = |args: &[&str]| {
            let input = std::fs::File::open(&archive).expect("open archive");
            let out = std::process::Command::new("cpio")
                .args(args)
                .current_dir(dir.path())
                .stdin(input)
                .output()
                .expect("run the system `cpio` (Debian package cpio)");
            assert!(
                out.status.success(),
                "cpio {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("utf-8 listing")
        };
        let listing = run(&["-it", "--quiet"]);
        let names: Vec<&str> = listing.lines().collect();
        assert_eq!(
            names,
            ["bin", "bin/hello", "empty", "bin/sh", "dev/console"]
        );
        // Extract the regular files and the link (a device node needs privileges).
        run(&[
            "-id",
            "--quiet",
            "--no-absolute-filenames",
            "bin",
            "bin/hello",
            "bin/sh",
            "empty",
        ]);
        let hello = std::fs::read(dir.path().join("bin/sh")).expect("read through symlink");
        assert_eq!(hello, b"hello\n");
        assert_eq!(
            std::fs::read(dir.path().join("empty")).expect("read empty"),
            b""
        );
    }
}
