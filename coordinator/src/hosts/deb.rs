//! The agent's Debian package as the installer sees it: its path, name, version, architecture,
//! size and sha256, read once on the operator's machine before any host is touched.
//!
//! The version decides what each host needs (install, upgrade, nothing); the sha256 is checked
//! on the host after the upload, before `dpkg -i` sees the file. The fields come from
//! `dpkg-deb -f`, the reference reader of the format.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};

use super::HostsError;

/// `dpkg-deb`, by absolute path.
pub const DPKG_DEB: &str = "/usr/bin/dpkg-deb";
/// The package the installer installs.
pub const AGENT_PACKAGE: &str = "haop-agent";

/// A checked `haop-agent` .deb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDeb {
    pub path: PathBuf,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
    pub size: u64,
}

impl AgentDeb {
    /// Reads and checks `path`: a Debian package named haop-agent with a sane version.
    pub async fn read(path: &Path) -> Result<AgentDeb, HostsError> {
        let bad = |reason: String| HostsError::Deb {
            path: path.to_path_buf(),
            reason,
        };
        let data = tokio::fs::read(path)
            .await
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        let out = tokio::process::Command::new(DPKG_DEB)
            .arg("-f")
            .arg(path)
            .args(["Package", "Version", "Architecture"])
            .env_clear()
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| bad(format!("cannot run {DPKG_DEB} (apt-get install dpkg): {e}")))?;
        if !out.status.success() {
            return Err(bad(format!(
                "not a Debian package: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let fields = parse_fields(&String::from_utf8_lossy(&out.stdout));
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| bad(format!("its control file has no {name}")))
        };
        let package = field("Package")?;
        if package != AGENT_PACKAGE {
            return Err(bad(format!("it is package {package}, not {AGENT_PACKAGE}")));
        }
        let version = field("Version")?;
        if !valid_version(&version) {
            return Err(bad(format!(
                "its version {version:?} is not a Debian version"
            )));
        }
        Ok(AgentDeb {
            path: path.to_path_buf(),
            architecture: field("Architecture")?,
            sha256: hex::encode(Sha256::digest(&data)),
            size: data.len() as u64,
            version,
        })
    }

    /// The file's name on the host while it is installed.
    pub fn remote_path(&self) -> String {
        format!(
            "/var/tmp/haop-agent_{}.deb",
            self.version.replace(':', "%3a")
        )
    }
}

/// `Key: value` lines of a control file.
pub fn parse_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Debian version syntax (policy 5.6.12), strictly enough that the version can be written into
/// a remote command line and a file name.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-~:".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_versions() {
        let f = parse_fields("Package: haop-agent\nVersion: 0.1.0-1\nArchitecture: amd64\n");
        assert_eq!(f[1], ("Version".to_string(), "0.1.0-1".to_string()));
        for good in ["0.1.0-1", "1:2.3~rc1+b1", "0.1.0"] {
            assert!(valid_version(good), "{good}");
        }
        for bad in ["", "v1", "1.0 ; rm", "1.0'", "1.0\n"] {
            assert!(!valid_version(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_package_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.deb");
        std::fs::write(&p, b"not a deb").unwrap();
        let e = AgentDeb::read(&p).await.unwrap_err();
        assert!(e.to_string().contains("x.deb"), "{e}");
    }
}
