//! tracefs: making sure it is mounted, and reading tracepoint `format` files so that
//! field offsets come from the running kernel rather than from constants.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use portx_common::{StateTpOffsets, SysEnterOffsets};

/// Where tracefs lives on current kernels; older setups only expose it under debugfs.
pub const TRACEFS_PATHS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it on /sys/kernel/tracing failed: {0} (try: mount -t tracefs nodev /sys/kernel/tracing)"
    )]
    Mount(io::Error),
    #[error("tracepoint {0} is missing from this kernel ({1}: {2})")]
    MissingTracepoint(String, PathBuf, io::Error),
    #[error("tracepoint {tracepoint}: field `{field}` not found in its format file")]
    MissingField { tracepoint: String, field: String },
    #[error("tracepoint {tracepoint}: field `{field}` is {found} bytes, portx reads {expected}")]
    FieldSize {
        tracepoint: String,
        field: String,
        found: u32,
        expected: u32,
    },
    #[error("tracepoint {tracepoint}: cannot parse format line `{line}`")]
    Parse { tracepoint: String, line: String },
}

/// Returns the tracefs root, mounting tracefs on `/sys/kernel/tracing` if no copy is
/// mounted (it is not at boot on some machines).
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(root) = TRACEFS_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(root.to_path_buf());
    }
    let target = Path::new(TRACEFS_PATHS[0]);
    let ok = unsafe {
        // SAFETY: static NUL-terminated strings.
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    } == 0;
    if !ok {
        return Err(TracefsError::Mount(io::Error::last_os_error()));
    }
    Ok(target.to_path_buf())
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// A parsed tracepoint `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub tracepoint: String,
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the text of `events/<category>/<name>/format`.
    pub fn parse(tracepoint: &str, text: &str) -> Result<Self, TracefsError> {
        let mut fields = Vec::new();
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let bad = || TracefsError::Parse {
                tracepoint: tracepoint.to_owned(),
                line: line.to_owned(),
            };
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for (i, part) in rest.split(';').map(str::trim).enumerate() {
                if i == 0 {
                    decl = Some(part);
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // "const void * skaddr", "__u8 saddr[4]", "int fd": the name is the last word.
            let name = decl
                .and_then(|d| d.rsplit([' ', '*']).next())
                .map(|n| n.split('[').next().unwrap_or(n))
                .filter(|n| !n.is_empty())
                .ok_or_else(bad)?;
            fields.push(Field {
                name: name.to_owned(),
                offset: offset.ok_or_else(bad)?,
                size: size.ok_or_else(bad)?,
            });
        }
        Ok(Self {
            tracepoint: tracepoint.to_owned(),
            fields,
        })
    }

    /// Reads and parses the format file of `category:name` under a tracefs root.
    pub fn read(root: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let path = root.join("events").join(category).join(name).join("format");
        let tracepoint = format!("{category}:{name}");
        let text = fs::read_to_string(&path)
            .map_err(|e| TracefsError::MissingTracepoint(tracepoint.clone(), path, e))?;
        Self::parse(&tracepoint, &text)
    }

    /// The offset of `name`, checking that the field has the size the BPF side reads.
    pub fn offset(&self, name: &str, expected_size: u32) -> Result<u32, TracefsError> {
        let field = self.fields.iter().find(|f| f.name == name).ok_or_else(|| {
            TracefsError::MissingField {
                tracepoint: self.tracepoint.clone(),
                field: name.to_owned(),
            }
        })?;
        if field.size != expected_size {
            return Err(TracefsError::FieldSize {
                tracepoint: self.tracepoint.clone(),
                field: name.to_owned(),
                found: field.size,
                expected: expected_size,
            });
        }
        Ok(field.offset)
    }

    /// Offsets for `sock:inet_sock_set_state`.
    pub fn state_offsets(&self) -> Result<StateTpOffsets, TracefsError> {
        Ok(StateTpOffsets {
            skaddr: self.offset("skaddr", 8)?,
            oldstate: self.offset("oldstate", 4)?,
            newstate: self.offset("newstate", 4)?,
            sport: self.offset("sport", 2)?,
            dport: self.offset("dport", 2)?,
            family: self.offset("family", 2)?,
            protocol: self.offset("protocol", 2)?,
            saddr: self.offset("saddr", 4)?,
            daddr: self.offset("daddr", 4)?,
            saddr_v6: self.offset("saddr_v6", 16)?,
            daddr_v6: self.offset("daddr_v6", 16)?,
        })
    }

    /// Offsets for `syscalls:sys_enter_connect` (`uservaddr`) or `sys_enter_bind`
    /// (`umyaddr`). Syscall arguments are 8 bytes each on 64-bit kernels.
    pub fn sys_enter_offsets(&self, addr_field: &str) -> Result<SysEnterOffsets, TracefsError> {
        Ok(SysEnterOffsets {
            fd: self.offset("fd", 8)?,
            addr: self.offset(addr_field, 8)?,
            addrlen: self.offset("addrlen", 8)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE_FORMAT: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s\", REC->family
";

    #[test]
    fn parses_inet_sock_set_state() {
        let f = Format::parse("sock:inet_sock_set_state", STATE_FORMAT).unwrap();
        let o = f.state_offsets().unwrap();
        assert_eq!(o.skaddr, 8);
        assert_eq!(o.oldstate, 16);
        assert_eq!(o.sport, 24);
        assert_eq!(o.protocol, 30);
        assert_eq!(o.saddr, 32);
        assert_eq!(o.daddr_v6, 56);
        assert_eq!(f.fields[0].name, "common_type");
    }

    #[test]
    fn offsets_follow_the_file_not_constants() {
        // A kernel that inserted a field before sport (as tcp_destroy_sock gained
        // sock_cookie) must move every later offset.
        let shifted = STATE_FORMAT.replace("offset:24;", "offset:28;");
        let f = Format::parse("sock:inet_sock_set_state", &shifted).unwrap();
        assert_eq!(f.offset("sport", 2).unwrap(), 28);
    }

    #[test]
    fn parses_syscall_enter() {
        let text = "format:
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * umyaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;
";
        let f = Format::parse("syscalls:sys_enter_bind", text).unwrap();
        let o = f.sys_enter_offsets("umyaddr").unwrap();
        assert_eq!((o.fd, o.addr, o.addrlen), (16, 24, 32));
        assert!(matches!(
            f.sys_enter_offsets("uservaddr"),
            Err(TracefsError::MissingField { .. })
        ));
    }

    #[test]
    fn missing_tracepoint_names_it() {
        let err = Format::read(Path::new("/nonexistent"), "sock", "inet_sock_set_state")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("tracepoint sock:inet_sock_set_state is missing from this kernel"),
            "{err}"
        );
    }

    #[test]
    fn rejects_unexpected_sizes_and_garbage() {
        let f = Format::parse(
            "sock:inet_sock_set_state",
            &STATE_FORMAT.replace(
                "size:2;\tsigned:0;\n\tfield:__u16 dport",
                "size:4;\tsigned:0;\n\tfield:__u16 dport",
            ),
        )
        .unwrap();
        let err = f.state_offsets().unwrap_err().to_string();
        assert!(err.contains("`sport` is 4 bytes, portx reads 2"), "{err}");

        let err = Format::parse("x:y", "\tfield:int a;\toffset:zz;\tsize:4;\n").unwrap_err();
        assert!(matches!(err, TracefsError::Parse { .. }));
    }
}
