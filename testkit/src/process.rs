//! Child processes that cannot outlive the test that started them.
//!
//! Two mechanisms, because either alone leaks: `Drop` kills the child when the
//! owning value goes out of scope, including while a panicking test unwinds;
//! `PR_SET_PDEATHSIG` makes the kernel kill it when the test process itself
//! dies without unwinding (SIGKILL, abort). The death signal fires when the
//! *thread* that forked exits, so every spawn happens on one spawner thread that
//! lives as long as the process.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the test-kit spawner thread");
        Mutex::new(tx)
    })
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct GuardedChild {
    child: Option<Child>,
}

impl GuardedChild {
    pub fn spawn(mut command: Command) -> io::Result<Self> {
        // SAFETY: the closure runs between fork and exec and only calls
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() == 1 {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()
            .lock()
            .map_err(|_| io::Error::other("test-kit spawner poisoned"))?
            .send((command, reply_tx))
            .map_err(|_| io::Error::other("test-kit spawner thread is gone"))?;
        let child = reply_rx.recv().map_err(|_| io::Error::other("test-kit spawner thread is gone"))??;
        Ok(Self { child: Some(child) })
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// Sends a signal (e.g. `libc::SIGSTOP`) without waiting.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let pid = self.id().ok_or_else(|| io::Error::other("process already reaped"))?;
        // SAFETY: plain syscall on a pid we own and have not reaped.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GuardedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process with this pid exists (zombies included).
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}
