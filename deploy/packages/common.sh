# execmesh maintainer-script functions: deploy/packages/build.sh puts this file in place of the
# `#EXECMESH_COMMON#` line of every postinst, prerm and postrm, so each script stands alone.

# execmesh_system_user NAME HOME COMMENT: creates the system group and user NAME (no password,
# no login shell) unless they exist. Users are never removed (files they own may remain).
execmesh_system_user() {
    if ! getent group "$1" >/dev/null; then
        groupadd --system "$1"
    fi
    if ! getent passwd "$1" >/dev/null; then
        useradd --system --gid "$1" --home-dir "$2" --no-create-home \
            --shell /usr/sbin/nologin --comment "$3" "$1"
    fi
}

# execmesh_owner OWNER GROUP MODE FILE...: gives each file OWNER:GROUP and MODE through
# dpkg-statoverride, so dpkg keeps them on every upgrade, unless the admin set an override.
execmesh_owner() {
    owner="$1" group="$2" mode="$3"
    shift 3
    for file in "$@"; do
        if ! dpkg-statoverride --list "$file" >/dev/null; then
            dpkg-statoverride --update --add "$owner" "$group" "$mode" "$file"
        fi
    done
}

# execmesh_forget_owner FILE...: drops the overrides execmesh_owner made (on purge).
execmesh_forget_owner() {
    for file in "$@"; do
        if dpkg-statoverride --list "$file" >/dev/null; then
            dpkg-statoverride --remove "$file"
        fi
    done
}

# execmesh_state_dir OWNER MODE DIR: creates DIR (and /var/lib/execmesh) unless it exists; an
# existing one is left as the admin keeps it. systemd's StateDirectory= would create it too, but
# the operator's own commands (`user add`, `token mint`, `verify`) may run before the service.
execmesh_state_dir() {
    install -d -m 0755 /var/lib/execmesh
    if [ ! -d "$3" ]; then
        install -d -o "$1" -g "$1" -m "$2" "$3"
    fi
}

# execmesh_systemd_configure UNIT OLD_VERSION: makes systemd read the new unit; on an upgrade
# restarts the service if it runs. A first install neither enables nor starts it: the service
# cannot run before the operator gives it its NATS seed and configuration.
execmesh_systemd_configure() {
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        if [ -n "$2" ]; then
            systemctl try-restart "$1" || true
        fi
    fi
    if [ -z "$2" ]; then
        echo "$1 installed, not started: see /usr/share/doc/${1%.service}/deploy.md" \
            "(or deploy/install.sh's next steps), then: systemctl enable --now $1"
    fi
}

# execmesh_systemd_stop UNIT: stops the service before its binary goes (prerm remove).
execmesh_systemd_stop() {
    if [ -d /run/systemd/system ]; then
        systemctl stop "$1" || true
    fi
}

# execmesh_systemd_forget UNIT: on purge, removes the admin's enablement of the unit, whose
# file is gone with the package.
execmesh_systemd_forget() {
    rm -f "/etc/systemd/system/multi-user.target.wants/$1"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
}
