"""Structures and images: random nanoparticles on amorphous carbon (``structures``, ASE) and abTEM multislice, CTF, dose and masks (``simulate``)."""
