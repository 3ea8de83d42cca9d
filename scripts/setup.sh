# Installs what slurm-vgpu's demo and tests need on Debian 12, as root; fast when already done.
# Sourced by scripts/demo and scripts/test. Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "run as root: the dev cluster starts slurmctld, slurmd and munge, and creates test users" >&2
    exit 2
fi

need_apt=()
for pair in slurmctld:slurm-wlm slurmd:slurm-wlm munged:munge gcc:build-essential make:build-essential \
            psql:postgresql-client sshd:openssh-server unshare:util-linux nsenter:util-linux \
            setfacl:acl lua5.1:lua5.1 mmdebstrap:mmdebstrap patchelf:patchelf slurmdbd:slurmdbd \
            mariadb:mariadb-client haproxy:haproxy; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need_apt+=("${pair#*:}")
done
[ -f /usr/include/slurm/spank.h ] || need_apt+=(libslurm-dev)
pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || need_apt+=(postgresql)
# slurmdbd keeps each dev cluster's accounting in MariaDB on 127.0.0.1:3306 (slurm_vgpu_dev/accounting.py).
mariadb_answers() { (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; }
mariadb_answers || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || need_apt+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    say "starting PostgreSQL"
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
    # A fresh Debian server asks for a password on TCP; the tests connect as postgres over loopback.
    say "allowing the postgres role over loopback without a password (test machine)"
    hba=$(su postgres -c "psql -Atc 'show hba_file'")
    sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    su postgres -c "psql -qc 'select pg_reload_conf()'"
fi

if ! mariadb_answers; then
    say "starting MariaDB"
    service mariadb start >/dev/null
    for _ in $(seq 30); do mariadb_answers && break; sleep 1; done
fi
if ! mariadb -h 127.0.0.1 -u root -e 'select 1' >/dev/null 2>&1; then
    # A fresh Debian server lets root in only over its socket; the dev kit connects over loopback.
    say "allowing MariaDB's root over loopback without a password (test machine)"
    mariadb -u root -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; \
        GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION"
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    say "installing slurm-vgpu and its test dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
