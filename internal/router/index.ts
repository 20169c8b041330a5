export { Router } from "./router.js";
export { routerServiceImpl } from "./service.js";
