// Node-RED settings for bench.nodered: no editor, no admin API, quiet logs.
module.exports = {
  httpAdminRoot: false,
  disableEditor: true,
  flowFile: "flows.json",
  logging: { console: { level: "warn", metrics: false, audit: false } },
  uiPort: Number(process.env.PORT || 1880),
};
