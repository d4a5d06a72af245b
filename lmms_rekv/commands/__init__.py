"""The user commands (``rekv live``, ``demo``, ``world``, ``doctor``, ``convert``; ``rekv`` itself
in ``cli``; ``rekv eval`` is ``lmms_rekv.integrations.run_eval``), built on the public API; the
flags they share are ``flags``."""
