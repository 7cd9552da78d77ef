"""The pull channel's metadata server (NoCloud, EC2 IMDS, OpenStack); arrives with the
pull-channel work."""
