#!/usr/bin/env bash
# Builds the .deb (cargo deb) and the .rpm (cargo generate-rpm) and checks them as a
# package user would meet them, on this Debian machine, as root:
# - lintian finds no error in the .deb; rpm -qip/-qlp show the RPM's metadata and files;
# - dpkg -i installs the user, the state directory and the unit (enabled, not started);
#   rebouncer -version runs; rebouncer -check refuses the shipped example with a clear
#   message and accepts it once its placeholders are filled; systemd-analyze verify
#   accepts the installed unit;
# - upgrades to the next build keep the edited configuration (also when the packaged
#   example changed too);
# - dpkg -r keeps the configuration and /var/lib/rebouncer, dpkg -P removes them;
# - installing over an existing configuration (the Go tool's) keeps it.
# It leaves the machine as it found it: anything it installs or creates is removed on the
# way out, also on failure, and an existing /etc/rebouncer or /var/lib/rebouncer is put
# back. Called by .ci/run; needs cargo-deb, cargo-generate-rpm, lintian and rpm.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
started=$SECONDS

say() { echo "package-test: $*"; }
fail() {
    echo "package-test: FAILED: $*" >&2
    exit 1
}

# dpkg's status word for rebouncer: "installed", "config-files", or "" when unknown.
# (Outputs are captured before they are searched: grep -q closing a pipe early would
# fail the writer under pipefail.)
pkg_status() { dpkg-query -W -f='${db:Status-Status}' rebouncer 2>/dev/null || true; }

[ "$(id -u)" = 0 ] || fail "run as root: it installs and removes the rebouncer package"
for tool in cargo-deb cargo-generate-rpm lintian rpm dpkg-deb systemd-analyze; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (.ci/run installs it)"
done
if [ -n "$(pkg_status)" ] && [ "$(pkg_status)" != not-installed ]; then
    fail "a rebouncer package is installed on this machine; this test installs and purges its own, so remove it first (dpkg -P rebouncer)"
fi

work=$(mktemp -d /tmp/rebouncer-package-test.XXXXXX)
user_existed=no
getent passwd rebouncer >/dev/null && user_existed=yes
group_existed=no
getent group rebouncer >/dev/null && group_existed=yes
# What the package owns on disk, moved aside if it is here already and put back at the end.
aside=()
for path in /etc/rebouncer /var/lib/rebouncer /var/log/rebouncer; do
    if [ -e "$path" ]; then
        mkdir -p "$work/aside$(dirname "$path")"
        mv "$path" "$work/aside$path"
        aside+=("$path")
    fi
done

cleanup() {
    local status=$?
    set +e
    case $(pkg_status) in
        "" | not-installed) ;;
        *) dpkg -P rebouncer >/dev/null 2>&1 ;;
    esac
    rm -rf /etc/rebouncer /var/lib/rebouncer /var/log/rebouncer
    for path in "${aside[@]}"; do
        mv "$work/aside$path" "$path"
    done
    [ "$user_existed" = yes ] || userdel rebouncer >/dev/null 2>&1
    if [ "$group_existed" = no ] && getent group rebouncer >/dev/null; then
        groupdel rebouncer >/dev/null 2>&1
    fi
    rm -rf "$work"
    if [ "$status" = 0 ]; then
        say "passed in $((SECONDS - started)) s"
    else
        echo "package-test: failed after $((SECONDS - started)) s (machine cleaned up)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || fail "no version in Cargo.toml"

say "building the .deb (cargo deb) and the .rpm (cargo generate-rpm)"
out=target/package-test
rm -rf "$out"
mkdir -p "$out"
cargo deb --locked --output "$out/" >"$work/cargo-deb.log" 2>&1 ||
    { cat "$work/cargo-deb.log"; fail "cargo deb"; }
cargo generate-rpm --output "$out/" >"$work/cargo-rpm.log" 2>&1 ||
    { cat "$work/cargo-rpm.log"; fail "cargo generate-rpm"; }
deb=$(echo "$out"/rebouncer_*.deb)
rpm=$(echo "$out"/rebouncer-*.rpm)
[ -f "$deb" ] || fail "cargo deb made no $out/rebouncer_*.deb"
[ -f "$rpm" ] || fail "cargo generate-rpm made no $out/rebouncer-*.rpm"

# The files both packages must carry; the Nagios plugin goes where each distribution
# keeps them.
common_files=(
    /usr/bin/rebouncer
    /etc/rebouncer/rebouncer.ini
    /usr/share/doc/rebouncer/README.md
    /usr/share/doc/rebouncer/examples/rebouncer.rules.yml
    /usr/lib/sysusers.d/rebouncer.conf
    /usr/lib/tmpfiles.d/rebouncer.conf
)

say "lintian"
lintian --fail-on error --display-info "$deb" | tee "$work/lintian.txt" ||
    fail "lintian reports errors in $deb (above)"

say "dpkg -c"
dpkg-deb -c "$deb" >"$work/dpkg-c.txt"
awk '{print $1, $2, $6}' "$work/dpkg-c.txt" | tee "$work/contents.txt"
for f in "${common_files[@]}" /usr/lib/nagios/plugins/check_rebouncer \
    /usr/share/man/man8/rebouncer.8.gz /usr/share/doc/rebouncer/changelog.Debian.gz \
    /usr/share/doc/rebouncer/copyright; do
    grep -q " \.$f\$" "$work/contents.txt" || fail "$f is not in $deb"
done
grep -q 'rebouncer.service$' "$work/contents.txt" || fail "no systemd unit in $deb"
dpkg-deb -I "$deb" conffiles >"$work/conffiles.txt"
grep -qx /etc/rebouncer/rebouncer.ini "$work/conffiles.txt" ||
    fail "/etc/rebouncer/rebouncer.ini is not a conffile of $deb"

say "rpm -qip, rpm -qlp"
rpm -qip "$rpm" | tee "$work/rpm-info.txt"
grep -q "^Version *: $version" "$work/rpm-info.txt" || fail "the RPM's version is not $version"
rpm -qlp "$rpm" | tee "$work/rpm-files.txt"
for f in "${common_files[@]}" /usr/lib64/nagios/plugins/check_rebouncer \
    /usr/share/man/man8/rebouncer.8.gz /usr/lib/systemd/system/rebouncer.service \
    /etc/rc.d/init.d/rebouncer; do
    grep -qx "$f" "$work/rpm-files.txt" || fail "$f is not in $rpm"
done
rpm -qp --configfiles "$rpm" >"$work/rpm-config.txt"
grep -qx /etc/rebouncer/rebouncer.ini "$work/rpm-config.txt" ||
    fail "/etc/rebouncer/rebouncer.ini is not a config file of $rpm"
rpm -qp --scripts "$rpm" >"$work/rpm-scripts.txt"
grep -q useradd "$work/rpm-scripts.txt" || fail "the RPM's %post does not create the user"

say "dpkg -i"
dpkg -i "$deb" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i $deb"; }
[ -x /usr/bin/rebouncer ] || fail "/usr/bin/rebouncer not installed"
getent passwd rebouncer >/dev/null || fail "the install created no rebouncer user"
[ "$(stat -c %U /var/lib/rebouncer)" = rebouncer ] ||
    fail "/var/lib/rebouncer is not owned by rebouncer: $(stat -c %U:%G /var/lib/rebouncer 2>&1)"
dpkg -L rebouncer >"$work/installed.txt"
unit=$(grep '/systemd/system/rebouncer.service$' "$work/installed.txt" || true)
[ -f "$unit" ] || fail "the unit file is not installed"
[ -L /etc/systemd/system/multi-user.target.wants/rebouncer.service ] ||
    fail "the install did not enable rebouncer.service"
dpkg-query --control-show rebouncer postinst >"$work/postinst.txt"
if grep -q 'deb-systemd-invoke start' "$work/postinst.txt"; then
    fail "the postinst starts rebouncer, which cannot run on the unfilled example"
fi

say "rebouncer -version"
got=$(rebouncer -version)
[ "$got" = "rebouncer $version" ] || fail "rebouncer -version said \"$got\", not \"rebouncer $version\""
gzip -t /usr/share/man/man8/rebouncer.8.gz || fail "no readable man page /usr/share/man/man8/rebouncer.8.gz"

say "rebouncer -check on the shipped example"
config=/etc/rebouncer/rebouncer.ini
if msg=$(rebouncer -check -config=$config 2>&1); then
    fail "rebouncer -check accepted the unfilled example: $msg"
fi
echo "$msg"
case $msg in
    *"[global] has no pgbouncer=; add pgbouncer="*) ;;
    *) fail "rebouncer -check on the example did not say what to fill in: $msg" ;;
esac

# The placeholders filled, as an operator would: the three required keys and a server,
# pointing at a directory of node files (nothing needs to answer: -check judges the
# configuration, and reports the servers).
pgdir="$work/pgbouncer"
mkdir -p "$pgdir/nodes"
printf '[databases]\nappdb = host=127.0.0.1 port=9\n\n[pgbouncer]\nlisten_port = 6432\n' >"$pgdir/nodes/db1.ini"
sed -i \
    -e "s|^#pgbouncer=.*|pgbouncer=host=127.0.0.1 port=9 dbname=pgbouncer user=rebouncer sslmode=disable|" \
    -e "s|^#symlink=.*|symlink=$pgdir/pgbouncer.ini|" \
    -e "s|^#configdir=.*|configdir=$pgdir/nodes|" \
    -e "s|^#db1=.*|db1=host=127.0.0.1 port=9 dbname=postgres user=rebouncer sslmode=disable|" \
    -e "s|^#interval=30|interval=17|" \
    "$config"
msg=$(rebouncer -check -config=$config 2>&1) ||
    fail "rebouncer -check refused the filled example: $msg"
echo "$msg"
case $msg in
    *"valid (1 servers, interval 17 s"*) ;;
    *) fail "rebouncer -check did not read the filled example: $msg" ;;
esac
cp "$config" "$work/edited.ini"

say "systemd-analyze verify $unit"
verify=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify $unit: $verify"
if [[ $verify == *rebouncer* ]]; then
    fail "systemd-analyze verify warns about the unit: $verify"
fi

# The next build: the same package with its version bumped, and again with the packaged
# example changed too (dpkg then has to choose; --force-confold keeps the operator's).
next_deb() { # next_deb <revision> <change the example: yes/no> -> path
    local root="$work/next-$1"
    dpkg-deb -R "$deb" "$root"
    sed -i "s/^Version: .*/Version: $version-$1/" "$root/DEBIAN/control"
    if [ "$2" = yes ]; then
        echo "# (a comment added by the next version)" >>"$root/etc/rebouncer/rebouncer.ini"
        (cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' |
            sort | xargs md5sum >DEBIAN/md5sums)
    fi
    dpkg-deb --root-owner-group -b "$root" "$work/rebouncer_$version-$1.deb" >/dev/null
    echo "$work/rebouncer_$version-$1.deb"
}
say "upgrade to the next build"
echo "state kept" >/var/lib/rebouncer/marker
dpkg -i "$(next_deb 2 no)" >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "upgrade to -2"; }
[ "$(dpkg-query -W -f='${Version}' rebouncer)" = "$version-2" ] || fail "not upgraded to $version-2"
cmp -s "$config" "$work/edited.ini" || fail "the upgrade to $version-2 changed the edited $config"
say "upgrade to a build whose example changed too"
dpkg -i --force-confdef --force-confold "$(next_deb 3 yes)" >"$work/upgrade.log" 2>&1 ||
    { cat "$work/upgrade.log"; fail "upgrade to -3"; }
[ "$(dpkg-query -W -f='${Version}' rebouncer)" = "$version-3" ] || fail "not upgraded to $version-3"
cmp -s "$config" "$work/edited.ini" || fail "the upgrade to $version-3 changed the edited $config"
[ -f "$config.dpkg-dist" ] || fail "the new example was not left beside it as $config.dpkg-dist"
rm -f "$config.dpkg-dist"
[ -f /var/lib/rebouncer/marker ] || fail "an upgrade lost /var/lib/rebouncer's contents"

say "dpkg -r keeps the configuration and the state"
dpkg -r rebouncer >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "dpkg -r"; }
[ ! -e /usr/bin/rebouncer ] || fail "dpkg -r left /usr/bin/rebouncer"
cmp -s "$config" "$work/edited.ini" || fail "dpkg -r did not keep $config"
[ -f /var/lib/rebouncer/marker ] || fail "dpkg -r did not keep /var/lib/rebouncer"

say "dpkg -P removes them"
dpkg -P rebouncer >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg -P"; }
for path in /etc/rebouncer /var/lib/rebouncer /var/log/rebouncer; do
    [ ! -e "$path" ] || fail "dpkg -P left $path"
done
case $(pkg_status) in
    "" | not-installed) ;;
    *) fail "dpkg -P left the package known to dpkg: $(pkg_status)" ;;
esac

say "install over the Go tool's configuration"
mkdir -p /etc/rebouncer
cp "$work/edited.ini" "$config"
dpkg -i --force-confold "$deb" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i over an existing $config"; }
cmp -s "$config" "$work/edited.ini" || fail "installing the package replaced an existing $config"
[ -f "$config.dpkg-dist" ] || fail "the example was not left beside an existing config as $config.dpkg-dist"
dpkg -P rebouncer >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg -P"; }
