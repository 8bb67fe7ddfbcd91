"""Where agents and their frameworks meet memcollect; each module needs an extra of its own,
and none is imported until used."""
