//! `portx report FILE...`: the offline incident report of a recording. No root, no
//! BPF, no async runtime: it reads files and feeds the model.

use std::{
    fs,
    io::{self, BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    capture::{Record, reader::Reader},
    cli::ReportArgs,
    views::report::{EventWriter, ReportBuilder, html, text, timeline_order},
};

pub fn run(args: &ReportArgs) -> Result<()> {
    if let Some(out) = &args.html
        && !args.force
        && fs::symlink_metadata(out).is_ok()
    {
        bail!("{}: exists (use --force to overwrite it)", out.display());
    }
    let files = ordered(&args.files)?;
    let stdout = io::stdout().lock();
    let mut stdout = BufWriter::new(stdout);
    let mut events = EventWriter::default();
    let mut builder = ReportBuilder::new();
    for path in &files {
        let shown = path.display().to_string();
        let mut reader = Reader::open(path)?;
        builder.begin_file(&shown);
        for record in reader.by_ref() {
            let record = record?;
            if args.events {
                events
                    .write(&mut stdout, &record)
                    .context("writing events")?;
            }
            builder.feed(&record)?;
        }
        builder.end_file(reader.status());
    }
    let report = builder.finish();
    if let Some(out) = &args.html {
        write_private(out, html::render(&report).as_bytes(), args.force)?;
        eprintln!("portx: wrote {}", out.display());
    }
    if args.json {
        serde_json::to_writer(&mut stdout, &report).context("writing the report")?;
        stdout.write_all(b"\n").context("writing the report")?;
    } else if !args.events {
        stdout
            .write_all(text::render(&report).as_bytes())
            .context("writing the report")?;
    }
    stdout.flush().context("writing the report")?;
    Ok(())
}

/// The files in timeline order (by recording, file_seq, start), reading each one's
/// header first; files of different recordings are refused.
fn ordered(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut with_headers = Vec::with_capacity(paths.len());
    for path in paths {
        let mut reader = Reader::open(path)?;
        let header = match reader.next().transpose()? {
            Some(Record::Header(h)) => Some(*h),
            _ => None,
        };
        with_headers.push((path.clone(), header));
    }
    timeline_order(&mut with_headers)?;
    Ok(with_headers.into_iter().map(|(p, _)| p).collect())
}

/// Writes `bytes` to a new file only its owner can read (the page names processes
/// and addresses); `force` replaces an existing file rather than writing through it,
/// so the new one gets the same 0600 mode.
fn write_private(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    if force {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}: removing it", path.display())),
        }
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}: creating it", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("{}: writing it", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn html_output_is_private_and_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("portx-report-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("page.html");
        let _ = fs::remove_file(&out);
        write_private(&out, b"one", false).unwrap();
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = write_private(&out, b"two", false).unwrap_err();
        assert!(format!("{err:#}").contains("creating it"), "{err:#}");
        fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&out, b"three", true).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"three");
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let args = ReportArgs {
            files: vec![dir.join("none.portx")],
            json: false,
            events: false,
            html: Some(out.clone()),
            force: false,
        };
        let err = run(&args).unwrap_err();
        assert!(
            format!("{err:#}").contains("exists (use --force"),
            "{err:#}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
