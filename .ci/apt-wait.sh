# Sourced by .ci/slurm-up: apt_get, an apt-get that waits (up to APT_LOCK_WAIT seconds, default 600, polling every
# APT_LOCK_POLL seconds, default 5) while another apt or dpkg holds its lock, instead of failing at once.
apt_get() {
  local start=$SECONDS out
  while true; do
    if out=$(apt-get -o DPkg::Lock::Timeout=5 "$@" 2>&1); then return 0; fi
    if ! grep -qiE "could not get lock|unable to acquire the dpkg frontend lock|is another process using it" <<<"$out" \
        || [ $((SECONDS - start)) -ge "${APT_LOCK_WAIT:-600}" ]; then
      echo "$out" | tail -3 >&2
      return 1
    fi
    echo "apt-get: another apt/dpkg holds the package lock; waiting"
    sleep "${APT_LOCK_POLL:-5}"
  done
}
