"""The lab Windows guest's WS-Management / WinRS endpoint.

Answers as a Windows WinRM service does (http 5985 with NTLM message encryption, https
5986 with NTLM and channel binding, Basic, client certificates), and runs each WinRS
command through the stand-in's program runner (:mod:`beachhead.bootstrap.lab.windows.run`).
Started by ``python -m beachhead.bootstrap.lab.windows.wsman``; see ``__main__``.
"""
