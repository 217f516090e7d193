"""The ``cmpp`` gateway: CMPP 2.0 / 3.0 connections to China Mobile's ISMG on the shared session core."""
