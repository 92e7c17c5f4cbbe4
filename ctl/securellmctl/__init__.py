"""securellmctl: the command-line client of the securellm-bridge control plane."""
