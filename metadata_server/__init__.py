"""The pull channel's metadata server: NoCloud-net, the EC2 metadata service (IMDS v1
and v2), OpenStack's metadata paths and cloud-init's phone home, per instance, with its
store (SQLite) and admin API. ``beachhead metadata-server`` runs it."""
