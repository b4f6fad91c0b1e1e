// The API viewer's start, a file of the hub's own so the page's CSP allows no inline script.
// validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io.
window.ui = SwaggerUIBundle({
  url: document.getElementById("swagger-ui").dataset.document,
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
  persistAuthorization: true,
});
