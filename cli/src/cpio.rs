//! A writer for the "newc" cpio format, the only archive format the Linux kernel
//! unpacks as an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Built in so `bothy run` needs no `cpio` tool at run time and so the archive is
//! reproducible: fixed mtime, uid/gid 0, inode numbers in insertion order.

/// Mode bits for the entry kinds the demo needs (`S_IF*` from <sys/stat.h>).
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

/// Accumulates an archive in memory.
pub struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
}

impl Default for CpioWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CpioWriter {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | perm, 0, &[]);
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | perm, 0, data);
    }

    /// A symbolic link: newc stores the target as the file data.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 0, target.as_bytes());
    }

    /// A character device node (e.g. /dev/console, needed before devtmpfs is mounted).
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | perm, (major << 8) | minor, &[]);
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: u32, data: &[u8]) {
        let path = path.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        self.header(ino, mode, nlink, data.len(), rdev, path);
        self.out.extend_from_slice(data);
        self.pad4();
    }

    fn header(&mut self, ino: u32, mode: u32, nlink: u32, size: usize, rdev: u32, name: &str) {
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed for reproducible archives
            u32::try_from(size).expect("cpio entries are < 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1, // includes the NUL
            0,                     // check (unused by newc)
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad4();
    }

    fn pad4(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Appends the `TRAILER!!!` entry and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, 0, "TRAILER!!!");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round-trips through the system `cpio` when it is installed (it is on CI).
    #[test]
    fn system_cpio_reads_it() {
        let mut w = CpioWriter::new();
        w.dir("/bin", 0o755);
        w.file("/bin/hello", 0o755, b"hello world");
        w.symlink("/bin/sh", "hello");
        w.char_dev("/dev/console", 0o600, 5, 1);
        let archive = w.finish();
        assert_eq!(archive.len() % 4, 0);
        assert!(archive.starts_with(b"070701"));

        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("cpio not installed; skipping the cross-check");
            return;
        };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("bin/hello"), "{listing}");
        assert!(listing.contains("bin/sh -> hello"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
        assert!(listing.contains(" 11 "), "{listing}");
    }

    #[test]
    fn header_fields() {
        let mut w = CpioWriter::new();
        w.file("a", 0o644, b"xyz");
        let a = w.finish();
        let hdr = std::str::from_utf8(&a[..110]).unwrap();
        assert_eq!(&hdr[14..22], "000081a4"); // mode
        assert_eq!(&hdr[54..62], "00000003"); // filesize
        assert_eq!(&hdr[94..102], "00000002"); // namesize "a\0"
        assert_eq!(&a[110..112], b"a\0");
        assert_eq!(&a[112..115], b"xyz");
    }
}
