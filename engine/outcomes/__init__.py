"""Merchant outcomes: order exports read into per-customer totals, and RFM segments built from them."""
