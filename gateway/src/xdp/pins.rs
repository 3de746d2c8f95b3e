//! The bpffs folder that keeps the XDP state beyond one process: every map pinned by
//! name, and the program's link. A restarted or upgraded gateway reopens the same maps
//! (lists, live entries, counters) and swaps its program into the same link, so the
//! driver never runs without the lists; the CLI reads the same maps.
//!
//! Layout: `<pin_path>/<interface>/<MAP NAME>` and `<pin_path>/<interface>/link`.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;

use super::XdpError;

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
/// Where systemd (and everyone else) mounts bpffs.
const STANDARD_BPFFS: &str = "/sys/fs/bpf";

/// One interface's pin folder.
#[derive(Debug, Clone)]
pub struct PinFolder {
    dir: PathBuf,
}

impl PinFolder {
    /// The folder for `interface` under `root` (`[xdp] pin_path`).
    pub fn new(root: &Path, interface: &str) -> Self {
        Self {
            dir: root.join(interface),
        }
    }

    /// The folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where the program's link is pinned.
    pub fn link(&self) -> PathBuf {
        self.dir.join("link")
    }

    /// Whether anything is pinned here.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Makes sure the folder exists on a bpf filesystem. bpffs is mounted at
    /// `/sys/fs/bpf` when nothing is (as systemd would); any other non-bpffs location
    /// is an error naming the fix.
    pub fn prepare(&self) -> Result<(), XdpError> {
        let root = self
            .dir
            .parent()
            .map_or_else(|| self.dir.clone(), Path::to_path_buf);
        let existing = root
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        if !is_bpffs(existing) {
            if existing == Path::new(STANDARD_BPFFS) {
                mount_bpffs(existing).map_err(|source| self.error("mounting bpffs", source))?;
                tracing::info!(path = STANDARD_BPFFS, "mounted the bpf filesystem");
            } else {
                return Err(XdpError::Pins {
                    path: root.clone(),
                    message: format!(
                        "{} is not on a bpf filesystem (mount one: mount -t bpf bpf {})",
                        root.display(),
                        existing.display()
                    ),
                });
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| self.error("creating", source))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|source| self.error("securing", source))?;
        }
        Ok(())
    }

    /// Unpins every map whose pinned layout or flags differ from `object`'s (a gateway
    /// built with a changed map is refused the old one rather than misreading it);
    /// returns their names. Map names are versioned by layout, so this happens across a
    /// change of a map's flags (which the kernel fixes at creation) or a layout change
    /// that forgot its new name.
    pub fn drop_incompatible_maps(&self, object: &[u8]) -> Result<Vec<String>, XdpError> {
        let parsed = aya_obj::Object::parse(object).map_err(|e| XdpError::Pins {
            path: self.dir.clone(),
            message: format!("reading the XDP object's maps: {e}"),
        })?;
        let mut dropped = Vec::new();
        for (name, map) in &parsed.maps {
            let path = self.map(name);
            if !path.exists() {
                continue;
            }
            let same = MapInfo::from_pin(&path).is_ok_and(|pinned| {
                pinned.key_size() == map.key_size()
                    && pinned.value_size() == map.value_size()
                    && pinned.max_entries() == map.max_entries()
                    && pinned.map_flags() == map.map_flags()
            });
            if !same {
                std::fs::remove_file(&path).map_err(|source| self.error("unpinning", source))?;
                dropped.push(name.clone());
            }
        }
        Ok(dropped)
    }

    /// Removes the folder and everything pinned in it (detaching a pinned link whose
    /// last holder this was).
    pub fn remove(&self) -> Result<(), XdpError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(self.error("removing", error))
            }
            _ => Ok(()),
        }
    }

    fn error(&self, action: &str, source: io::Error) -> XdpError {
        XdpError::Pins {
            path: self.dir.clone(),
            message: format!("{action}: {source}"),
        }
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid NUL-terminated path and a buffer of the right type.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    // SAFETY: statfs filled it in when it returned 0.
    rc == 0 && unsafe { stat.assume_init() }.f_type == BPF_FS_MAGIC
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
