//! The suite's own programs (cert-manager's controller and CA injector, our webhook) as child
//! processes with their logs in the control plane's log dir, where a failure's log dump shows them.

use anyhow::{Context, Result, bail};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use storm_test_support::Cluster;

/// A program of this suite in the background, killed when dropped, its log removed then unless
/// [`Background::keep_log`] was set.
pub struct Background {
    child: Child,
    log: PathBuf,
    /// Keep the log file after the process is gone (the test failed).
    pub keep_log: bool,
}

impl Background {
    /// Starts `program` with `args` and `env`, stdout and stderr into `<log dir>/<name>.log`.
    pub fn start(
        cluster: &Cluster,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &Path)],
    ) -> Result<Self> {
        let log = cluster.log_dir().join(format!("{name}.log"));
        let mut file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        writeln!(file, "---- start {} {}", program.display(), args.join(" "))?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            child,
            log,
            keep_log: false,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("exited ({status}), see {}", self.log.display()),
        }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.keep_log {
            eprintln!("log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
