# Sourced by build.sh and qemu.sh. private_apt apt-get|apt-cache ARGS...: apt with only our
# sources and state, all under $apt_dir (nothing of the system's apt configuration or
# state is read or written); $apt_default_release, if set, is APT::Default-Release.
private_apt() {
  local tool=$1
  shift
  local release=()
  [ -z "${apt_default_release:-}" ] || release=(-o "APT::Default-Release=$apt_default_release")
  "$tool" -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null \
    "${release[@]}" \
    -o Dir::State="$apt_dir/state" -o Dir::State::Lists="$apt_dir/lists" \
    -o Dir::State::status="$apt_dir/state/status" \
    -o Dir::Cache="$apt_dir/cache" -o Dir::Cache::archives="$apt_dir/archives" \
    -o Dir::Cache::pkgcache=pkgcache.bin -o Dir::Cache::srcpkgcache= \
    -o Acquire::Languages=none -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false \
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false \
    -o Acquire::IndexTargets::deb::CNF::DefaultEnabled=false \
    -o APT::Sandbox::User=root -o Debug::NoLocking=1 "$@"
}
