-- A site's PV plant (RegistryService Site.pv_system): the arrays, the inverters' AC limit and the
-- altitude the PV forecast models. One JSON object per site, because it is read and written whole
-- with its site and nothing queries inside it; NULL: the site has no PV description.
-- Shape (checked by services/registry/pv.py before it is written):
--   {"arrays": [{"tilt_deg", "azimuth_deg", "peak_power_kw", "losses_fraction"?}, ...],
--    "inverter_limit_w", "altitude_m"}
ALTER TABLE app.sites ADD COLUMN pv_system jsonb CHECK (pv_system IS NULL OR jsonb_typeof(pv_system) = 'object');
