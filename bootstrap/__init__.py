"""Guest payloads per OS and the local peers (sshd, later the vSphere lab) that the demo
and the tests run against."""
