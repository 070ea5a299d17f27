//! The one value that flows through every command: where the store is, how chatty to be,
//! whether to draw progress bars.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::escape_controls;

#[derive(Clone, Debug)]
pub struct Context {
    /// `--store` / `IMSCTL_HOME` as given; resolved to the default by the store module.
    pub store: Option<PathBuf>,
    pub verbose: u8,
    /// Progress bars are drawn only on a terminal and when not `--quiet`.
    pub progress: bool,
    /// How to reach S3 when a command publishes or imports there (`--s3-endpoint`, AWS_*).
    pub s3: crate::s3::S3Options,
}

impl Context {
    pub fn new(store: Option<PathBuf>, verbose: u8, quiet: bool) -> Self {
        let progress = !quiet && std::io::stderr().is_terminal();
        Context {
            store,
            verbose,
            progress,
            s3: Default::default(),
        }
    }

    /// What a step could not carry over (e.g. xattrs SquashFS cannot store): always shown,
    /// since nothing may be lost silently.
    pub fn warn_all(&self, warnings: &[String]) {
        for w in warnings {
            eprintln!("imsctl: warning: {}", escape_controls(w));
        }
    }

    /// A step log line on stderr, shown with `-v`.
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.verbose > 0 {
            eprintln!("imsctl: {}", escape_controls(msg.as_ref()));
        }
    }

    /// A byte-count progress bar: with a total when it is known, a spinner with rate otherwise.
    pub fn bytes_bar(&self, what: &str, total: Option<u64>) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{msg:>10} {spinner} {bytes} {bytes_per_sec} {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        bar.set_message(what.to_string());
        bar
    }
}

/// Mirrors a shared counter into a progress bar from a background thread until dropped.
pub struct CounterTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    bar: ProgressBar,
}

impl CounterTicker {
    pub fn start(bar: ProgressBar, counter: Arc<AtomicU64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = if bar.is_hidden() {
            None
        } else {
            let (stop, bar) = (stop.clone(), bar.clone());
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        bar.set_position(counter.load(Ordering::Relaxed));
                        std::thread::sleep(Duration::from_millis(120));
                    }
                })
                .ok()
        };
        CounterTicker { stop, thread, bar }
    }
}

impl Drop for CounterTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

/// A reader that counts the bytes it passes, for progress over a compressed input.
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R) -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            CountingReader {
                inner,
                count: count.clone(),
            },
            count,
        )
    }
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
