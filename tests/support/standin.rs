//! A stand-in yt-dlp release for the updater's tests: a wheel named like
//! yt-dlp's (`yt_dlp-<version>-py3-none-any.whl`) whose `yt-dlp` console
//! script answers `--version` itself and hands every other run to the real
//! yt-dlp on PATH (so jobs really download). Each run appends its arguments
//! to `runs.log` in its own venv, which tells the tests which install ran a
//! job. A `broken` release fails every run but `--version`, the way a
//! release with a broken extractor does.
//!
//! The wheel is written by Python's zipfile (a wheel is a zip with a RECORD
//! of hashes), then renamed into place so pip never sees half a file.

use std::path::{Path, PathBuf};

const BUILD: &str = r#"
import base64, hashlib, os, sys, zipfile
out, version, broken = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
code = '''import os, sys
VERSION = %r
BROKEN = %r
def main():
    args = sys.argv[1:]
    with open(os.path.join(sys.prefix, "runs.log"), "a") as f:
        f.write(" ".join(args) + "\\n")
    if args == ["--version"]:
        print(VERSION)
        return 0
    if BROKEN:
        sys.stderr.write("ERROR: [generic] Unable to extract data; please report this issue on https://github.com/yt-dlp/yt-dlp/issues\\n")
        return 1
    me = os.path.realpath(sys.prefix)
    for d in os.environ.get("PATH", "").split(os.pathsep):
        real = os.path.join(d, "yt-dlp")
        if os.path.isfile(real) and os.access(real, os.X_OK) and not os.path.realpath(real).startswith(me):
            os.execv(real, [real] + args)
    sys.stderr.write("ERROR: the stand-in found no real yt-dlp on PATH\\n")
    return 1
''' % (version, broken)
dist = "yt_dlp-%s.dist-info" % version
files = {
    "ytdlp_standin/__init__.py": code,
    dist + "/METADATA": "Metadata-Version: 2.1\nName: yt-dlp\nVersion: %s\n" % version,
    dist + "/WHEEL": "Wheel-Version: 1.0\nGenerator: tgdl-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    dist + "/entry_points.txt": "[console_scripts]\nyt-dlp = ytdlp_standin:main\n",
}
record = []
for name, text in files.items():
    data = text.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append("%s,sha256=%s,%d" % (name, digest, len(data)))
record.append(dist + "/RECORD,,")
files[dist + "/RECORD"] = "\n".join(record) + "\n"
name = "yt_dlp-%s-py3-none-any.whl" % version
tmp = os.path.join(out, "." + name + ".tmp")
with zipfile.ZipFile(tmp, "w") as z:
    for n, text in files.items():
        z.writestr(n, text)
os.rename(tmp, os.path.join(out, name))
"#;

/// Write the wheel of stand-in release `version` into `dir`.
pub fn build_wheel(dir: &Path, version: &str, broken: bool) -> PathBuf {
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(BUILD)
        .arg(dir)
        .arg(version)
        .arg(if broken { "1" } else { "0" })
        .status()
        .expect("python3 runs");
    assert!(status.success(), "building the {version} wheel failed");
    dir.join(format!("yt_dlp-{version}-py3-none-any.whl"))
}

/// What the install in `install_dir` ran (one line of arguments per run).
pub fn runs(install_dir: &Path) -> String {
    std::fs::read_to_string(install_dir.join("venv").join("runs.log")).unwrap_or_default()
}
