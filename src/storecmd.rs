//! `theta store`: offline operations on a data directory (stop the server first): backup to
//! one file, restore from one, and migration of an older on-disk format.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use theta_store::archive::{self, Progress, Summary};
use theta_store::{Store, StoreConfig};

/// `theta store …`.
#[derive(Debug, clap::Subcommand)]
pub enum StoreCmd {
    /// Write every session's log and rejection trail to one file (verified on restore).
    Backup {
        /// The data directory (of a stopped server).
        #[arg(long, value_name = "DIR", default_value = "theta-data")]
        data: PathBuf,
        /// The backup file to write (refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Create a data directory from a backup, checking every chain link, hash and rule.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The new data directory (must not exist or be empty). Copy the old `service.key`
        /// into it first to keep signing tree heads with the same key.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Convert a data directory written by an older theta to the current on-disk format; the
    /// old directory is kept beside it as DIR.format-N.
    Migrate {
        /// The data directory (of a stopped server).
        #[arg(long, value_name = "DIR", default_value = "theta-data")]
        data: PathBuf,
    },
}

/// Prints progress to stderr about once a second.
fn reporter(what: &'static str) -> impl FnMut(Progress) {
    let mut last = Instant::now();
    let started = Instant::now();
    move |p: Progress| {
        if last.elapsed().as_secs_f64() < 1.0 && p.total != Some(p.done) {
            return;
        }
        last = Instant::now();
        let rate = p.done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        match p.total {
            Some(t) if t > 0 => {
                eprintln!("{what}: {} of {t} entries ({:.0}%), {rate:.0}/s", p.done, p.done as f64 * 100.0 / t as f64)
            }
            _ => eprintln!("{what}: {} entries, {rate:.0}/s", p.done),
        }
    }
}

fn print_summary(s: &Summary) {
    println!("{} sessions, {} entries, {} rejection records", s.sessions.len(), s.entries, s.rejections);
    for (id, seq, root) in &s.sessions {
        println!("  session {id}  head {seq}  root {}", hex::encode(root));
    }
}

/// Opens a data directory for an offline tool, explaining a held lock.
fn open(dir: &Path) -> anyhow::Result<Store> {
    if !dir.join("db").exists() {
        bail!("{} holds no store", dir.display());
    }
    Store::open(dir, StoreConfig::default()).map_err(|e| {
        let text = e.to_string();
        if text.contains("could not acquire lock") {
            anyhow::anyhow!("{} is in use (is `theta serve` running on it? stop it first): {text}", dir.display())
        } else {
            anyhow::anyhow!("open {}: {text}", dir.display())
        }
    })
}

/// Runs a `theta store` subcommand.
pub fn run(cmd: StoreCmd) -> anyhow::Result<()> {
    match cmd {
        StoreCmd::Backup { data, out } => {
            if out.exists() {
                bail!("{} exists; choose another file", out.display());
            }
            let store = open(&data)?;
            let tmp = out.with_extension("partial");
            let file = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let summary = archive::backup(&store, &mut w, &mut reporter("backup"))?;
            let file = w.into_inner().map_err(|e| e.into_error()).context("write the backup")?;
            file.sync_all().context("sync the backup")?;
            std::fs::rename(&tmp, &out).with_context(|| format!("rename to {}", out.display()))?;
            print_summary(&summary);
            println!("wrote {} ({} bytes)", out.display(), std::fs::metadata(&out).map_or(0, |m| m.len()));
            Ok(())
        }
        StoreCmd::Restore { from, data } => {
            if data.exists()
                && std::fs::read_dir(&data)
                    .map(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name() != "service.key")))
                    .unwrap_or(true)
            {
                bail!("{} exists and is not empty; restore into a new directory", data.display());
            }
            let file = std::fs::File::open(&from).with_context(|| format!("open {}", from.display()))?;
            let store =
                Store::open(&data, StoreConfig::default()).with_context(|| format!("create {}", data.display()))?;
            match archive::restore(&store, std::io::BufReader::new(file), &mut reporter("restore")) {
                Ok(summary) => {
                    store.close();
                    print_summary(&summary);
                    println!("restored into {}", data.display());
                    Ok(())
                }
                Err(e) => {
                    store.close();
                    bail!("restore failed: {e}\n{} is incomplete: remove it", data.display())
                }
            }
        }
        StoreCmd::Migrate { data } => {
            let summary = archive::migrate(&data, StoreConfig::default(), &mut reporter("migrate")).map_err(|e| {
                let text = e.to_string();
                if text.contains("could not acquire lock") {
                    anyhow::anyhow!(
                        "{} is in use (is `theta serve` running on it? stop it first): {text}",
                        data.display()
                    )
                } else {
                    anyhow::anyhow!("migrate {}: {text}", data.display())
                }
            })?;
            print_summary(&summary);
            let kept = (1..theta_store::FORMAT_VERSION)
                .map(|n| data.with_extension(format!("format-{n}")))
                .rfind(|p| p.exists())
                .unwrap_or_else(|| data.with_extension("format-N"));
            println!(
                "{} is now in format {}; the old one is kept as {}",
                data.display(),
                theta_store::FORMAT_VERSION,
                kept.display()
            );
            Ok(())
        }
    }
}
