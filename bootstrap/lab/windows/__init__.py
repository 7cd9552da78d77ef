"""The lab's Windows stand-in: what answers for a Windows guest where no Windows runs.

Two parts, one process model:

* :mod:`~beachhead.bootstrap.lab.windows.run` runs a Windows command line (as
  ``CreateProcess`` is given it) in the stand-in's guest: a short, documented list of
  real Windows programs and cmd.exe built-ins, emulated generically (never keyed to any
  client's scripts), on the guest's drive folders (``ROOT/C/...``). Both the vCenter
  launcher's ``StartProgramInGuest`` and the WinRS endpoint start it.
* :mod:`~beachhead.bootstrap.lab.windows.wsman` is the guest's WS-Management / WinRS
  endpoint (5985 http, 5986 https), faithful to real Windows exchanges.
"""
