#!/usr/bin/env bash
# Builds the newer PgBouncer and PostgreSQL that the integration suite also runs against,
# from Debian's source packages: pgbouncer from trixie and postgresql-18 from forky by
# default. Prints, on stdout only, the two settings the test fixture reads:
#   REBOUNCER_PGBOUNCER=<cache>/pgbouncer-<version>/prefix/bin/pgbouncer
#   REBOUNCER_PG_BIN=<cache>/postgresql-18-<version>/prefix/bin
# Progress and build times go to stderr.
#
# - The source comes from the mirror this machine's apt is already configured with for its
#   own release (apt's own parser finds it, whatever the format of its sources files);
#   the deb-src lines for the newer suites live only in a private apt setup under the
#   cache directory. The machine's sources, lists and package caches are not touched.
# - Each build is installed into a prefix under the cache directory, keyed by the source
#   package's version and the build recipe, and a finished one is never built again.
# - Only the upstream tarball of the source package is built: Debian's patches move
#   PostgreSQL's files to /usr/lib/postgresql/<major> and its socket to
#   /var/run/postgresql, which a private prefix cannot use.
#
# Settings (environment): REBOUNCER_CI_CACHE (default /var/cache/rebouncer-ci),
# REBOUNCER_CI_PGBOUNCER_SRC (default pgbouncer/trixie), REBOUNCER_CI_POSTGRESQL_SRC
# (default postgresql-18/forky). Needs root only to write the default cache directory;
# build tools: gcc, make, pkg-config, bison, flex, perl, zlib1g-dev, libssl-dev,
# libevent-dev, libc-ares-dev (.ci/run installs them).
set -euo pipefail
shopt -s inherit_errexit
# The prefixes must be readable by the postgres user the tests run the servers as.
umask 022

cache=${REBOUNCER_CI_CACHE:-/var/cache/rebouncer-ci}
pgbouncer_src=${REBOUNCER_CI_PGBOUNCER_SRC:-pgbouncer/trixie}
postgresql_src=${REBOUNCER_CI_POSTGRESQL_SRC:-postgresql-18/forky}

say() { echo "build-versions: $*" >&2; }
fail() {
    echo "build-versions: FAILED: $*" >&2
    exit 1
}

for tool in apt-get gcc make pkg-config bison flex perl tar; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (.ci/run installs it)"
done
mkdir -p "$cache"
# The servers run as the postgres user when the tests run as root: it must reach them.
chmod 755 "$cache"

# --- a private apt setup holding only the deb-src lines --------------------------------
# shellcheck source=/dev/null
release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$release" ] || fail "no VERSION_CODENAME in /etc/os-release: cannot tell which configured mirror is this machine's Debian one"
# The first configured binary repository of this machine's own release, e.g.
# "http://mirror.example/debian/ bookworm deb".
# shellcheck disable=SC2016 # apt's own $(FIELD) placeholders, not the shell's
targets=$(apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)')
mirror=$(awk -v rel="$release" '$2 == rel && $3 == "deb" { print $1; exit }' <<<"$targets")
[ -n "$mirror" ] || fail "no apt source for '$release' configured on this machine (/etc/apt/sources.list, /etc/apt/sources.list.d/): the deb-src lines are made from its mirror"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || fail "$keyring is missing (package debian-archive-keyring): cannot check the archive's signatures"

apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d"
suites=$(printf '%s\n' "${pgbouncer_src#*/}" "${postgresql_src#*/}" | sort -u)
: >"$apt_dir/sources.list.new"
for suite in $suites; do
    echo "deb-src [signed-by=$keyring] $mirror $suite main" >>"$apt_dir/sources.list.new"
done
mv "$apt_dir/sources.list.new" "$apt_dir/sources.list"
apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Acquire::Languages=none"
    -o "APT::Get::List-Cleanup=true"
)
if [ -n "$(getent passwd _apt)" ]; then
    chown -R _apt "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" 2>/dev/null || true
fi

say "updating the source lists of $(tr '\n' ' ' <<<"$suites")from $mirror (private lists in $apt_dir)"
update_ok=1
apt-get "${apt_opts[@]}" -qq update >&2 || update_ok=0

# The version apt would fetch for "name/suite": from the local name of its .dsc file, the
# second word of apt's "'<uri>' <file> <size> <hash>" lines.
source_version() {
    local uris dsc
    uris=$(apt-get "${apt_opts[@]}" -qq --print-uris source "$1" 2>&1) ||
        fail "apt-get source $1 on $mirror: $uris"
    dsc=$(awk '$2 ~ /\.dsc$/ { print $2; exit }' <<<"$uris")
    [ -n "$dsc" ] || fail "apt-get source --print-uris $1 named no .dsc file: $uris"
    dsc=${dsc%.dsc}
    echo "${dsc#*_}"
}

# Downloads the source package spec ($1) into directory $2 and unpacks its upstream
# tarball there; prints the unpacked directory.
fetch_upstream() {
    local spec=$1 dir=$2 out orig top
    mkdir -p "$dir"
    if [ -n "$(getent passwd _apt)" ]; then chown _apt "$dir"; fi
    out=$(cd "$dir" && apt-get "${apt_opts[@]}" -qq source --download-only "$spec" 2>&1) ||
        fail "apt-get source --download-only $spec on $mirror: $out"
    orig=$(find "$dir" -maxdepth 1 -name '*.orig.tar.*' ! -name '*.asc' | sed -n 1p)
    [ -n "$orig" ] || fail "apt-get source $spec gave no upstream tarball (*.orig.tar.*) in $dir"
    top=$(tar -tf "$orig" | sed -n 1p)
    top=${top%%/*}
    tar -xf "$orig" -C "$dir"
    echo "$dir/$top"
}

# build <name> <spec> <check-file relative to prefix> <build function>
# Sets $built to the prefix.
build() {
    local name=$1 spec=$2 check=$3 how=$4 version recipe key link src started
    link=$cache/$name.current
    if [ "$update_ok" = 1 ]; then
        version=$(source_version "$spec")
        # The recipe is part of the key: a changed configure line builds anew.
        recipe=$(declare -f "$how" | sha256sum)
        key=$name-$version-${recipe:0:8}
    elif [ -e "$link/.done" ]; then
        key=$(basename "$(readlink -f "$link")")
        say "WARNING: could not update the source lists (above); using the cached $key, which may be older than $spec"
    else
        fail "could not update the source lists from $mirror (above) and nothing is cached for $spec in $cache"
    fi
    built=$cache/$key/prefix
    if [ -e "$cache/$key/.done" ] && [ -x "$built/$check" ]; then
        say "$key: cached in $cache/$key"
    else
        rm -rf "${cache:?}/$key"
        started=$SECONDS
        say "$key: fetching $spec"
        src=$(fetch_upstream "$spec" "$cache/$key/src")
        say "$key: building in $src"
        "$how" "$src" "$built" >"$cache/$key/build.log" 2>&1 ||
            fail "$key: the build failed; its output is in $cache/$key/build.log (last lines: $(tail -n 20 "$cache/$key/build.log"))"
        [ -x "$built/$check" ] || fail "$key: the build finished without $built/$check"
        rm -rf "$cache/$key/src"
        touch "$cache/$key/.done"
        say "$key: built in $((SECONDS - started)) s into $built"
    fi
    ln -sfn "$key" "$link"
}

build_pgbouncer() {
    (cd "$1" && ./configure --prefix="$2" --with-openssl --with-cares && make -j2 && make install)
}
# With OpenSSL: the tests run PostgreSQL with TLS (ssl=on) too.
build_postgresql() {
    (cd "$1" && ./configure --prefix="$2" --with-openssl --without-icu --without-readline && make -j2 && make install)
}

build "${pgbouncer_src%%/*}" "$pgbouncer_src" bin/pgbouncer build_pgbouncer
pgbouncer=$built/bin/pgbouncer
build "${postgresql_src%%/*}" "$postgresql_src" bin/postgres build_postgresql
pg_bin=$built/bin

say "$("$pgbouncer" --version | head -n 1); $("$pg_bin/postgres" --version)"
echo "REBOUNCER_PGBOUNCER=$pgbouncer"
echo "REBOUNCER_PG_BIN=$pg_bin"
