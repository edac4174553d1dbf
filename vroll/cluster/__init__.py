"""Roles on Ray: one actor per engine, placed on the devices `device_mapping` names."""
